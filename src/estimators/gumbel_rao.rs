//! `gumbel-rao`: the Gumbel-Rao estimator (Paulus, Maddison and Krause 2021, "Rao-Blackwellizing
//! the straight-through Gumbel-softmax gradient estimator"): straight-through Gumbel-softmax
//! with its Jacobian averaged over the Gumbel noise given the hard draw. Per draw `z` and
//! variable `l`, with M conditional draws `G~_m ~ G | argmax(a + G) = z` (`--gr-samples`):
//! `g_hat_l = (1/M) sum_m (1/tau) J(y~_lm) grad_l f(e_z)`, `y~_m = softmax((log p + G~_m) / tau)`.
//! Its mean is `st-gumbel`'s (M = 1 is `st-gumbel` in distribution) and its variance is no
//! larger (Rao-Blackwell); biased for every tau > 0. One gradient of the loss per draw (one
//! loss evaluation), K M more uniforms; needs the loss defined off the vertices.
//!
//! The conditional Gumbels (Maddison, Tarlow and Minka 2014, "A* sampling"; Tucker et al.
//! 2017, appendix), in the coordinates `log p + G` where the maximum is a standard Gumbel:
//! with uniforms `v`, `z~_b = -log(-log v_b)` for the drawn category `b` and, for `i != b`,
//! `z~_i = -log(-log(v_i) / p_i - log v_b)`, a Gumbel of location `log p_i` truncated below
//! `z~_b` ([`conditional_gumbels`]). Draw `i`'s m-th conditional noise reads the auxiliary
//! noise at block `i M + m`, lanes `l ceil(K/4) ..` (one Philox block per four categories).

use super::st::grad_at_vertex;
use super::{add_relaxed_jacobian, Context, Estimator, Family, JointDraws, Noise};

/// Gumbel-Rao with `--gr-samples` conditional draws per hard draw.
pub struct GumbelRao;

/// `log p` of every variable (L*K numbers), in f64 from the logits.
pub(super) fn log_probs(ctx: &Context) -> Vec<f64> {
    ctx.logits
        .chunks_exact(ctx.k)
        .flat_map(|a| {
            let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + a.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            a.iter().map(move |v| v - lse)
        })
        .collect()
}

/// K uniforms in (0, 1) of one variable: auxiliary noise block `block`, lanes
/// `lane..lane + ceil(K/4)`.
pub(super) fn uniforms(noise: &Noise, block: u32, lane: u32, out: &mut [f64]) {
    for (g, chunk) in out.chunks_mut(4).enumerate() {
        let u = noise.open_uniforms(block, lane + g as u32);
        chunk.copy_from_slice(&u[..chunk.len()]);
    }
}

/// `p = exp(log p)` of every variable (L*K numbers), as [`conditional_gumbels`] reads it:
/// computed once per estimate rather than once per category of every conditional draw.
pub(super) fn probs_of(log_p: &[f64]) -> Vec<f64> {
    log_p.iter().map(|lp| lp.exp()).collect()
}

/// One variable's Gumbels conditioned on `argmax = b`, from uniforms `v` (K numbers), in the
/// coordinates `log p + G`, into `z`; and, where asked, `kappa_i = d z~_i / d log p_i` into
/// `kappa` (0 at `b`, whose value is a standard Gumbel whatever p is). `p` is
/// `exp(log p)` ([`probs_of`]). Stable forms: `z~_i = log p_i - log(-log v_i + W p_i)`,
/// `kappa_i = -log v_i / (-log v_i + W p_i)`, `W = -log v_b`.
pub(super) fn conditional_gumbels(
    (log_p, p): (&[f64], &[f64]),
    b: usize,
    v: &[f64],
    z: &mut [f64],
    mut kappa: Option<&mut [f64]>,
) {
    let k = z.len();
    assert!(log_p.len() >= k && p.len() >= k && v.len() >= k && b < k);
    let w = -v[b].ln();
    for i in 0..k {
        if i == b {
            z[i] = -w.ln();
            if let Some(kappa) = kappa.as_deref_mut() {
                kappa[i] = 0.0;
            }
        } else {
            let e = -v[i].ln();
            let d = e + w * p[i];
            z[i] = log_p[i] - d.ln();
            if let Some(kappa) = kappa.as_deref_mut() {
                kappa[i] = e / d;
            }
        }
    }
}

/// `softmax(x / tau)` into `y`.
pub(super) fn tempered_softmax(x: &[f64], tau: f64, y: &mut [f64]) {
    let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = ((xi - max) / tau).exp();
        sum += *yi;
    }
    y.iter_mut().for_each(|yi| *yi /= sum);
}

/// The noise blocks one estimate may read: its block counter's range, 2^32.
const NOISE_BLOCKS: u64 = 1 << 32;

impl Estimator for GumbelRao {
    fn id(&self) -> &'static str {
        "gumbel-rao"
    }
    fn family(&self) -> Family {
        Family::Relaxed
    }
    fn is_unbiased(&self) -> bool {
        false
    }
    fn needs_extension(&self) -> bool {
        true
    }
    fn estimate(&self, ctx: &Context, d: &JointDraws<'_>, _: f64, out: &mut [f64]) -> Option<f64> {
        self.estimate_losses(&[ctx], d, out);
        None
    }
    /// Draw `i`'s conditional draw `j` reads noise block `i M + j` (a 32-bit Philox
    /// counter): past `S M = 2^32` the blocks would wrap and repeat.
    fn check_samples(&self, ctx: &Context, s: u32) -> crate::Result<()> {
        let m = u64::from(ctx.settings.gr_samples.max(1));
        if u64::from(s) * m > NOISE_BLOCKS {
            return Err(crate::Error::InvalidArgument(format!(
                "gumbel-rao at S = {s} with M = {m} conditional draws per draw needs {} noise blocks per estimate; its 32-bit block counter holds 2^32, so S <= {} at this M (or lower --gr-samples)",
                u64::from(s) * m,
                NOISE_BLOCKS / m
            )));
        }
        Ok(())
    }

    fn shares_work_across_losses(&self) -> bool {
        true
    }
    /// None: each estimate reads its own repetition's draws alone (so the CPU's generic path
    /// computes a block's repetitions in parallel).
    fn keeps_moving_average(&self) -> bool {
        false
    }
    /// The conditional draws and their tempered softmaxes (the logarithms and exponentials,
    /// most of the work) once per draw for every loss; each loss's gradient at the hard draw
    /// and Jacobian product apart, as [`Estimator::estimate`] does them for it alone.
    fn estimate_losses(&self, ctxs: &[&Context], d: &JointDraws<'_>, out: &mut [f64]) {
        let Some(&ctx) = ctxs.first() else {
            return;
        };
        let (l, k, n) = (ctx.l, ctx.k, ctx.dim());
        let m = ctx.settings.gr_samples.max(1);
        assert!(
            ctxs.iter().all(|c| c.l == l
                && c.k == k
                && c.logits == ctx.logits
                && c.tau == ctx.tau
                && c.settings.gr_samples == ctx.settings.gr_samples),
            "gumbel-rao shares its draws only across the losses of one problem and temperature"
        );
        let g = ctxs.len();
        let out = &mut out[..g * n];
        let groups = k.div_ceil(4) as u32;
        let log_p = log_probs(ctx);
        let p = probs_of(&log_p);
        // Per loss: the gradient at the hard draw (`v`) and the sum over the M draws (`acc`).
        let (mut hard, mut v, mut acc) = (vec![0.0; n], vec![0.0; g * n], vec![0.0; g * n]);
        let (mut u, mut zt, mut yt) = (vec![0.0; k], vec![0.0; n], vec![0.0; n]);
        out.iter_mut().for_each(|o| *o = 0.0);
        let inv_m = 1.0 / f64::from(m);
        for (i, z) in d.z.chunks_exact(l).enumerate() {
            for (c, v) in ctxs.iter().zip(v.chunks_exact_mut(n)) {
                grad_at_vertex(c, z, &mut hard, v);
            }
            acc.iter_mut().for_each(|a| *a = 0.0);
            for draw in 0..m {
                let block = i as u32 * m + draw;
                for (var, &c) in z.iter().enumerate() {
                    let r = var * k..(var + 1) * k;
                    uniforms(&d.noise, block, var as u32 * groups, &mut u);
                    conditional_gumbels(
                        (&log_p[r.clone()], &p[r.clone()]),
                        c as usize,
                        &u,
                        &mut zt[r.clone()],
                        None,
                    );
                    tempered_softmax(&zt[r.clone()], ctx.tau, &mut yt[r]);
                }
                for ((c, v), acc) in ctxs
                    .iter()
                    .zip(v.chunks_exact(n))
                    .zip(acc.chunks_exact_mut(n))
                {
                    add_relaxed_jacobian(c, &yt, v, acc);
                }
            }
            out.iter_mut().zip(&acc).for_each(|(o, a)| *o += a * inv_m);
        }
        let inv = 1.0 / d.s as f64;
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conditional Gumbels keep the drawn category the maximum, and their argmax-given
    /// distribution: with p = (0.2, 0.3, 0.5) and b = 2, `P(z~_0 > z~_1)` is the probability
    /// that category 0 beats 1 given that 2 won, `p_0 / (p_0 + p_1) = 0.4` (the Gumbel race
    /// among the losers is still a race in proportion to p). 20000 draws: se 0.0035; 5 se.
    #[test]
    fn conditional_gumbels_keep_the_winner_and_the_losers_race() {
        let p = [0.2f64, 0.3, 0.5];
        let log_p: Vec<f64> = p.iter().map(|v| v.ln()).collect();
        let p_of = probs_of(&log_p);
        let noise = Noise {
            key: [1, 2],
            rep: 3,
            point: 0,
        };
        let (mut u, mut z, mut kappa) = ([0.0; 3], [0.0; 3], [0.0; 3]);
        let n = 20_000;
        let mut wins = 0;
        for i in 0..n {
            uniforms(&noise, i, 0, &mut u);
            conditional_gumbels((&log_p, &p_of), 2, &u, &mut z, Some(&mut kappa));
            assert!(z[2] > z[0] && z[2] > z[1]);
            assert!(kappa.iter().all(|k| (0.0..=1.0).contains(k)));
            wins += u32::from(z[0] > z[1]);
        }
        let frac = f64::from(wins) / f64::from(n);
        assert!(
            (frac - 0.4).abs() < 5.0 * (0.24f64 / f64::from(n)).sqrt(),
            "{frac}"
        );
    }
}
