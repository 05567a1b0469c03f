//! The named problems: the field's reference setups, each built from `--seed` (and `--p`
//! where its loss reads it), with a line on what it is and its source. `--problem NAME`
//! takes one; `mcgrad problems` lists them.

use crate::error::{Error, Result};
use crate::loss::Loss;
use crate::philox::{PhiloxStream, STREAM_PROBLEM};
use crate::problem::{Decoder, Problem, DEFAULT_D, DEFAULT_K};

/// One named problem.
pub struct NamedProblem {
    /// The name `--problem` takes.
    pub name: &'static str,
    /// What it is.
    pub about: &'static str,
    /// Where it comes from.
    pub source: &'static str,
    /// The losses a run uses when `--loss` is not given.
    pub default_losses: &'static [Loss],
    /// Builds it from a seed.
    pub build: fn(u64) -> Problem,
}

/// Every named problem, in the order `mcgrad problems` lists them.
pub static NAMED: &[NamedProblem] = &[
    NamedProblem {
        name: "seed",
        about: "one 10-way choice of a 784-input softmax layer, x, W, t ~ U[0,1) (the default)",
        source: "the origin notebook",
        default_losses: &Loss::QUADRATIC,
        build: seed,
    },
    NamedProblem {
        name: "rebar-toy",
        about: "one Bernoulli, f = (z - 0.45)^2 (pnorm, p = 2), logits 0",
        source: "Tucker et al. 2017 (REBAR), Fig. 1",
        default_losses: &[Loss::Pnorm],
        build: rebar_toy,
    },
    NamedProblem {
        name: "relax-toy",
        about: "one Bernoulli, f = (z - 0.499)^2 (pnorm, p = 2), logits 0",
        source: "Grathwohl et al. 2018 (RELAX), Fig. 1",
        default_losses: &[Loss::Pnorm],
        build: relax_toy,
    },
    NamedProblem {
        name: "indecater-12x3",
        about: "12 variables of 3 categories, free logits ~ U[-1,1), pnorm p = 1, b from the sample space",
        source: "De Smet et al. 2023 (IndeCateR), synthetic experiment",
        default_losses: &[Loss::Pnorm],
        build: indecater_12x3,
    },
    NamedProblem {
        name: "indecater-6x10",
        about: "6 variables of 10 categories, free logits ~ U[-1,1), pnorm p = 1, b from the sample space",
        source: "De Smet et al. 2023 (IndeCateR), synthetic experiment",
        default_losses: &[Loss::Pnorm],
        build: indecater_6x10,
    },
    NamedProblem {
        name: "indecater-3x100",
        about: "3 variables of 100 categories, free logits ~ U[-1,1), pnorm p = 1, b from the sample space",
        source: "De Smet et al. 2023 (IndeCateR), synthetic experiment",
        default_losses: &[Loss::Pnorm],
        build: indecater_3x100,
    },
    NamedProblem {
        name: "reinmax-poly",
        about: "128 Bernoulli variables, f = mean_l |z_l - 0.45|^p (--p), logits 0",
        source: "Liu et al. 2023 (ReinMax), polynomial programming",
        default_losses: &[Loss::Pnorm],
        build: reinmax_poly,
    },
    NamedProblem {
        name: "arm-toy",
        about: "one Bernoulli, f = (z - 0.49)^2 (pnorm, p = 2), logits 0; the paper maximises E f (optimum p(z = 1) = 1)",
        source: "Yin and Zhou 2019 (ARM), Fig. 1 (p0 = 0.49; mcgrad reproduce arm-toy runs all four p0)",
        default_losses: &[Loss::Pnorm],
        build: arm_toy,
    },
    NamedProblem {
        name: "indecater-200",
        about: "200 Bernoulli variables, f = mean_l (z_l - 0.499)^2 (pnorm, p = 2), logits 0; the paper maximises E f",
        source: "De Smet et al. 2023 (IndeCateR), synthetic optimisation",
        default_losses: &[Loss::Pnorm],
        build: indecater_200,
    },
    NamedProblem {
        name: "vae-decoder",
        about: "20 variables of 10 categories feeding a random 784-pixel sigmoid decoder scored on one fixed binary image",
        source: "a discrete VAE's reconstruction term (Jang et al. 2017; Maddison et al. 2017)",
        default_losses: &[Loss::Decoder],
        build: vae_decoder,
    },
];

/// Looks a named problem up.
///
/// # Errors
/// [`Error::Unknown`] listing the names.
pub fn by_name(name: &str) -> Result<&'static NamedProblem> {
    NAMED
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Error::Unknown {
            kind: "problem",
            name: name.to_string(),
            known: NAMED.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
        })
}

fn seed(seed: u64) -> Problem {
    Problem::seeded(seed, DEFAULT_D, DEFAULT_K)
}

fn bernoulli_toy(target: f64) -> Problem {
    let mut p = Problem::free_logits(1, 2, vec![0.0, 0.0]);
    p.b = vec![target];
    p
}

fn rebar_toy(_: u64) -> Problem {
    bernoulli_toy(0.45)
}

fn relax_toy(_: u64) -> Problem {
    bernoulli_toy(0.499)
}

fn arm_toy(_: u64) -> Problem {
    bernoulli_toy(0.49)
}

fn indecater_200(_: u64) -> Problem {
    let mut p = Problem::free_logits(200, 2, vec![0.0; 400]);
    p.b = vec![0.499; 200];
    p
}

/// Free logits `U[-1, 1)` and `b_l` uniform on `{0, ..., K-1}`, from the seed.
fn indecater(seed: u64, l: usize, k: usize) -> Problem {
    let mut rng = PhiloxStream::new(seed, STREAM_PROBLEM, 1);
    let logits = (0..l * k).map(|_| 2.0 * rng.next_f64() - 1.0).collect();
    let mut p = Problem::free_logits(l, k, logits);
    p.b = (0..l)
        .map(|_| (rng.next_f64() * k as f64).floor().min(k as f64 - 1.0))
        .collect();
    p.exponent = 1.0;
    p
}

fn indecater_12x3(s: u64) -> Problem {
    indecater(s, 12, 3)
}

fn indecater_6x10(s: u64) -> Problem {
    indecater(s, 6, 10)
}

fn indecater_3x100(s: u64) -> Problem {
    indecater(s, 3, 100)
}

fn reinmax_poly(_: u64) -> Problem {
    let mut p = Problem::free_logits(128, 2, vec![0.0; 256]);
    p.b = vec![0.45; 128];
    p
}

/// 20 x 10 latents, logits `U[-1,1)`; decoder `V ~ U[-1,1) / 2`, `c ~ U[-1,1)`; the image
/// is the decoder's own most likely output at one random latent configuration, so the loss
/// has a clear optimum.
fn vae_decoder(seed: u64) -> Problem {
    let (l, k, h) = (20, 10, 784);
    let mut rng = PhiloxStream::new(seed, STREAM_PROBLEM, 2);
    let mut uniform = || 2.0 * rng.next_f64() - 1.0;
    let logits = (0..l * k).map(|_| uniform()).collect();
    let v: Vec<f64> = (0..h * l * k).map(|_| 0.5 * uniform()).collect();
    let c: Vec<f64> = (0..h).map(|_| uniform()).collect();
    let latent: Vec<usize> = (0..l)
        .map(|_| ((uniform() + 1.0) * 5.0) as usize % k)
        .collect();
    let target = (0..h)
        .map(|row| {
            let act: f64 = c[row]
                + latent
                    .iter()
                    .enumerate()
                    .map(|(var, &z)| v[row * l * k + var * k + z])
                    .sum::<f64>();
            f64::from(u8::from(act > 0.0))
        })
        .collect();
    let mut p = Problem::free_logits(l, k, logits);
    p.decoder = Some(Decoder { h, v, c, target });
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_problem_is_valid_for_its_default_losses() {
        for named in NAMED {
            let p = (named.build)(3);
            p.validate().unwrap();
            for &loss in named.default_losses {
                p.check_loss(loss).unwrap();
            }
        }
    }

    #[test]
    fn indecater_targets_lie_in_the_sample_space() {
        let p = indecater(5, 6, 10);
        assert!(p
            .b
            .iter()
            .all(|&b| b.fract() == 0.0 && (0.0..10.0).contains(&b)));
    }
}
