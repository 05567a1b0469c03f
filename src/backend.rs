//! Where work runs: the one backend choice of `mcgrad run` and `mcgrad train`
//! (`--backend auto|cpu|gpu`, with `--adapter NAME`), and the one function, [`select`], that
//! turns it into a device. `cpu` is the CPU; `gpu` is any adapter, software ones (Mesa's
//! lavapipe, llvmpipe) too, or the one `--adapter` names; `auto` is a hardware GPU (or the
//! named adapter) if one opens, else the CPU, since a software GPU is slower than the CPU.
//! The callers bring what "open a GPU" means to them (the sweep engine, training's forward
//! pass), so the rule is written once.

use crate::error::{Error, Result};
use crate::gpu::GpuPreference;

/// Which device runs the work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A hardware GPU if there is one (or the `--adapter` named), else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// Any GPU adapter, software ones too (or the `--adapter` named).
    Gpu,
}

impl Backend {
    /// Every choice, in the order the help lists them.
    pub const ALL: [Backend; 3] = [Backend::Auto, Backend::Cpu, Backend::Gpu];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Cpu => "cpu",
            Backend::Gpu => "gpu",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = Error;

    /// Parses `auto`, `cpu` or `gpu` (exactly, as the command line takes them).
    ///
    /// # Errors
    /// [`Error::Unknown`] listing the known names.
    fn from_str(s: &str) -> Result<Self> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| Error::Unknown {
                kind: "backend",
                name: s.to_string(),
                known: Backend::ALL.map(Backend::name).join(", "),
            })
    }
}

/// What a backend choice resolved to.
#[derive(Debug)]
pub enum Device<G> {
    /// The CPU.
    Cpu,
    /// A GPU, opened by the caller's `open`.
    Gpu(G),
}

/// Resolves `backend` (with the adapter name `adapter`, if any) to a device: `cpu` the CPU;
/// `gpu` what `open` makes of [`GpuPreference::Any`] or of the named adapter; `auto` what
/// `open` makes of [`GpuPreference::HardwareOnly`] or of the named adapter, or the CPU when
/// that is [`Error::GpuUnavailable`]. `gpu_unfit` is why the caller's GPU cannot take this
/// work at all (`mcgrad run` with K past the GPU engine's limit): `gpu` is then refused with
/// it, and `auto` takes the CPU without trying a GPU.
///
/// # Errors
/// [`Error::InvalidArgument`] with `gpu_unfit` for `gpu`; whatever `open` returns, but for
/// `auto`'s [`Error::GpuUnavailable`].
pub fn select<G>(
    backend: Backend,
    adapter: Option<&str>,
    gpu_unfit: Option<String>,
    open: impl FnOnce(&GpuPreference) -> Result<G>,
) -> Result<Device<G>> {
    let named = adapter.map(|a| GpuPreference::Named(a.to_string()));
    match backend {
        Backend::Cpu => Ok(Device::Cpu),
        Backend::Gpu => match gpu_unfit {
            Some(why) => Err(Error::InvalidArgument(why)),
            None => open(&named.unwrap_or(GpuPreference::Any)).map(Device::Gpu),
        },
        Backend::Auto if gpu_unfit.is_some() => Ok(Device::Cpu),
        Backend::Auto => match open(&named.unwrap_or(GpuPreference::HardwareOnly)) {
            Ok(g) => Ok(Device::Gpu(g)),
            Err(Error::GpuUnavailable(_)) => Ok(Device::Cpu),
            Err(other) => Err(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known() {
        for b in Backend::ALL {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        let err = "bogus".parse::<Backend>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown backend `bogus` (known: auto, cpu, gpu)"
        );
        assert_eq!(err.exit_code(), 2);
        assert!("GPU".parse::<Backend>().is_err(), "names are exact");
    }

    /// What `open` is asked for, and what each answer becomes.
    #[test]
    fn selection_rule() {
        let unavailable = |_: &GpuPreference| -> Result<GpuPreference> {
            Err(Error::GpuUnavailable("none".into()))
        };
        let echo = |p: &GpuPreference| -> Result<GpuPreference> { Ok(p.clone()) };
        let gpu = |d: Device<GpuPreference>| match d {
            Device::Gpu(p) => Some(p),
            Device::Cpu => None,
        };
        // cpu never opens a GPU.
        let never = |_: &GpuPreference| -> Result<GpuPreference> { panic!("opened a GPU") };
        assert!(gpu(select(Backend::Cpu, Some("x"), None, never).unwrap()).is_none());
        // gpu: any adapter, or the named one; unavailable is an error.
        assert_eq!(
            gpu(select(Backend::Gpu, None, None, echo).unwrap()),
            Some(GpuPreference::Any)
        );
        assert_eq!(
            gpu(select(Backend::Gpu, Some("lava"), None, echo).unwrap()),
            Some(GpuPreference::Named("lava".into()))
        );
        assert!(matches!(
            select(Backend::Gpu, None, None, unavailable),
            Err(Error::GpuUnavailable(_))
        ));
        // auto: hardware only (or the named one), else the CPU.
        assert_eq!(
            gpu(select(Backend::Auto, None, None, echo).unwrap()),
            Some(GpuPreference::HardwareOnly)
        );
        assert!(gpu(select(Backend::Auto, None, None, unavailable).unwrap()).is_none());
        let broken = |_: &GpuPreference| -> Result<GpuPreference> { Err(Error::Gpu("x".into())) };
        assert!(matches!(
            select(Backend::Auto, None, None, broken),
            Err(Error::Gpu(_))
        ));
        // Work the GPU cannot take: gpu refused (exit 2), auto on the CPU without trying.
        let err = select(Backend::Gpu, None, Some("too big".into()), never).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(ref m) if m == "too big"));
        assert!(gpu(select(Backend::Auto, None, Some("too big".into()), never).unwrap()).is_none());
    }
}
