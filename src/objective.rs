//! The objective `f(z_0, ..., z_{L-1})`: a [`Loss`] bound to a problem's data, evaluated at a
//! joint vertex (the categories drawn) or, where the loss extends off the vertices, at a
//! relaxed point `y` in `R^{L*K}` with its gradient. Every estimator's loss evaluations go
//! through here, so the cost of an estimate is counted in one place.
//!
//! The losses that are sums of per-variable terms (`squared`, `linear`, `seed`, `pnorm`) also
//! give those terms ([`Objective::separable_terms`]): the exact oracles use them for closed
//! forms at any L (see [`crate::oracle`]).
//!
//! The hot paths evaluate many vertices at once: [`Objective::at_vertices`] (the losses of S
//! joint draws), [`Objective::conditional_vertices`] (the K losses `f(z_{-l}, c)` of the
//! per-variable estimators) and [`Objective::vertex_gradient_blocks`] (the gradient at every
//! vertex, block by block, for a separable loss). Each gives the bits [`Objective::at_vertex`]
//! (or [`Objective::grad`]) gives, and `pnorm` reads its per-(variable, category) terms from a
//! table built once instead of taking a power per term.

use crate::loss::{Loss, Quadratic};
use crate::problem::{Decoder, Problem};

/// A loss bound to the data it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// The loss.
    pub loss: Loss,
    /// Variables L.
    pub l: usize,
    /// Categories per variable K.
    pub k: usize,
    form: Form,
    /// [`Objective::vertex_gradient_blocks`], built on first use.
    gradient_blocks: GradientBlocks,
}

/// Most numbers (`L K K`) [`Objective::vertex_gradient_blocks`] keeps: 2^20, 8 MiB.
pub const MAX_GRADIENT_BLOCKS: usize = 1 << 20;

/// The lazily built table of [`Objective::vertex_gradient_blocks`]: a cache, so it takes no
/// part in comparisons (it is a function of the rest of the objective).
#[derive(Clone, Debug, Default)]
struct GradientBlocks(std::sync::OnceLock<Option<std::sync::Arc<[f64]>>>);

impl PartialEq for GradientBlocks {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Form {
    Quadratic(Quadratic),
    /// `terms[l*K + c] = |c - b_l|^p`, the value [`pnorm_term`] gives, once per objective.
    Pnorm {
        b: Vec<f64>,
        p: f64,
        terms: Vec<f64>,
    },
    Decoder(Decoder),
    Table(Vec<f64>),
}

fn softplus(h: f64) -> f64 {
    // log(1 + e^h) without overflow: max(h, 0) + log1p(e^-|h|).
    h.max(0.0) + (-h.abs()).exp().ln_1p()
}

fn sigmoid(h: f64) -> f64 {
    if h >= 0.0 {
        1.0 / (1.0 + (-h).exp())
    } else {
        let e = h.exp();
        e / (1.0 + e)
    }
}

impl Objective {
    /// `loss` on `problem`'s data.
    ///
    /// # Panics
    /// If the problem lacks the loss's field (see [`Problem::check_loss`], which callers run
    /// first).
    pub fn new(problem: &Problem, loss: Loss) -> Self {
        let form = match loss {
            Loss::Seed | Loss::Squared | Loss::Linear => {
                Form::Quadratic(loss.quadratic(&problem.t))
            }
            Loss::Pnorm => Form::Pnorm {
                b: problem.b.clone(),
                p: problem.exponent,
                terms: problem
                    .b
                    .iter()
                    .flat_map(|&bl| {
                        (0..problem.k as u32)
                            .map(move |c| pnorm_term(f64::from(c) - bl, problem.exponent))
                    })
                    .collect(),
            },
            Loss::Decoder => Form::Decoder(
                problem
                    .decoder
                    .clone()
                    .expect("the decoder loss needs the problem's decoder"),
            ),
            Loss::Table => Form::Table(problem.table.clone()),
        };
        Self {
            loss,
            l: problem.l,
            k: problem.k,
            form,
            gradient_blocks: GradientBlocks::default(),
        }
    }

    /// The quadratic form, for the three quadratic losses.
    pub fn quadratic(&self) -> Option<&Quadratic> {
        match &self.form {
            Form::Quadratic(q) => Some(q),
            _ => None,
        }
    }

    /// Whether `f` is defined off the vertices.
    pub fn has_extension(&self) -> bool {
        self.loss.has_extension()
    }

    /// `f` at the joint vertex `z` (L categories): one loss evaluation.
    #[inline]
    pub fn at_vertex(&self, z: &[u32]) -> f64 {
        let k = self.k;
        match &self.form {
            Form::Quadratic(q) => {
                let lin: f64 = z
                    .iter()
                    .enumerate()
                    .map(|(l, &c)| q.beta[l * k + c as usize])
                    .sum();
                q.alpha * self.l as f64 + lin + q.gamma
            }
            Form::Pnorm { terms, .. } => {
                // The table holds `pnorm_term(c - b_l, p)`: the same terms, summed in the same
                // order.
                let total: f64 = z
                    .iter()
                    .zip(terms.chunks_exact(k))
                    .map(|(&c, t)| t[c as usize])
                    .sum();
                total / self.l as f64
            }
            Form::Decoder(dec) => {
                let n = self.l * k;
                let mut f = 0.0;
                for (hh, (row, (&c, &t))) in dec
                    .v
                    .chunks_exact(n)
                    .zip(dec.c.iter().zip(&dec.target))
                    .enumerate()
                {
                    let _ = hh;
                    let h: f64 = c + z
                        .iter()
                        .enumerate()
                        .map(|(l, &zl)| row[l * k + zl as usize])
                        .sum::<f64>();
                    f += softplus(h) - t * h;
                }
                f
            }
            Form::Table(table) => {
                let index = z.iter().fold(0usize, |acc, &c| acc * k + c as usize);
                table[index]
            }
        }
    }

    /// `out[i] = f(z_i)` for the joint draws `z` (draw-major, L categories each): one loss
    /// evaluation per draw, bit for bit [`Objective::at_vertex`] of each.
    pub fn at_vertices(&self, z: &[u32], out: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn avx2(obj: &Objective, z: &[u32], out: &mut [f64]) {
            obj.at_vertices_lanes(z, out);
        }
        #[cfg(target_arch = "x86_64")]
        if crate::fastmath::has_avx2() {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(self, z, out) };
        }
        self.at_vertices_lanes(z, out);
    }

    #[inline(always)]
    fn at_vertices_lanes(&self, z: &[u32], out: &mut [f64]) {
        let (l, k) = (self.l, self.k);
        let n = out.len().min(z.len() / l);
        let out = &mut out[..n];
        match &self.form {
            Form::Pnorm { terms, .. } => {
                separable_sums(z, l, k, terms, out);
                let count = self.l as f64;
                out.iter_mut().for_each(|o| *o /= count);
            }
            Form::Quadratic(q) => {
                separable_sums(z, l, k, &q.beta, out);
                let base = q.alpha * self.l as f64;
                out.iter_mut().for_each(|o| *o = base + *o + q.gamma);
            }
            _ => {
                for (o, zi) in out.iter_mut().zip(z.chunks_exact(l)) {
                    *o = self.at_vertex(zi);
                }
            }
        }
    }

    /// `out[i] = f(z_i)` for S joint draws laid out variable-major (`zt[l * S + i]`, as
    /// [`crate::draws::draw_joint_categories_by_variable`] writes them), `S = out.len()`: bit
    /// for bit [`Objective::at_vertex`] of each draw (a separable loss sums its terms in
    /// variable order, one variable across all S draws at a time).
    pub fn at_vertices_by_variable(&self, zt: &[u32], out: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn avx2(obj: &Objective, zt: &[u32], out: &mut [f64]) {
            obj.at_vertices_by_variable_lanes(zt, out);
        }
        #[cfg(target_arch = "x86_64")]
        if crate::fastmath::has_avx2() {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { avx2(self, zt, out) };
        }
        self.at_vertices_by_variable_lanes(zt, out);
    }

    /// For a loss whose vertex value is `finish(sum_l table[l*K + z_l])` (the sum in variable
    /// order from an iterator's neutral element), the table and the finish, which give
    /// [`Objective::at_vertex`] bit for bit; `None` for the other losses.
    pub fn separable_vertex_form(&self) -> Option<(&[f64], VertexFinish)> {
        match &self.form {
            Form::Pnorm { terms, .. } => Some((terms, VertexFinish::Mean(self.l as f64))),
            Form::Quadratic(q) => Some((
                &q.beta,
                VertexFinish::Affine {
                    base: q.alpha * self.l as f64,
                    gamma: q.gamma,
                },
            )),
            _ => None,
        }
    }

    #[inline(always)]
    fn at_vertices_by_variable_lanes(&self, zt: &[u32], out: &mut [f64]) {
        let (l, k, s) = (self.l, self.k, out.len());
        match self.separable_vertex_form() {
            Some((table, finish)) => {
                separable_sums_by_variable(zt, l, k, table, out);
                out.iter_mut().for_each(|o| *o = finish.apply(*o));
            }
            None => {
                let mut zi = vec![0u32; l];
                for (i, o) in out.iter_mut().enumerate() {
                    for (var, c) in zi.iter_mut().enumerate() {
                        *c = zt[var * s + i];
                    }
                    *o = self.at_vertex(&zi);
                }
            }
        }
    }

    /// `out[c] = f(z with variable l set to c)` for every category `c` (K loss evaluations),
    /// bit for bit [`Objective::at_vertex`] of each. For a separable loss the terms of the
    /// other variables are summed once, in [`Objective::at_vertex`]'s order (the prefix before
    /// `l`, then variable `l`'s term, then the terms after it), across the K categories at
    /// once. `scratch` holds L numbers (overwritten; used for the coupled losses).
    pub fn conditional_vertices(&self, z: &[u32], l: usize, scratch: &mut [u32], out: &mut [f64]) {
        let k = self.k;
        let out = &mut out[..k];
        match &self.form {
            Form::Pnorm { terms, .. } => {
                separable_conditional(z, l, k, |m, c| terms[m * k + c as usize], out);
                let count = self.l as f64;
                out.iter_mut().for_each(|o| *o /= count);
            }
            Form::Quadratic(q) => {
                separable_conditional(z, l, k, |m, c| q.beta[m * k + c as usize], out);
                let base = q.alpha * self.l as f64;
                out.iter_mut().for_each(|o| *o = base + *o + q.gamma);
            }
            _ => {
                scratch.copy_from_slice(z);
                for (c, o) in out.iter_mut().enumerate() {
                    scratch[l] = c as u32;
                    *o = self.at_vertex(scratch);
                }
            }
        }
    }

    /// For a separable loss, the gradient at every vertex block by block: block `l` of
    /// `grad f(e_z)` depends on `z_l` alone, and `out[(l*K + c)*K + j]` is its coordinate `j`
    /// where `z_l = c` (L*K*K numbers, bit for bit [`Objective::grad`] at the one-hot point).
    /// `None` for a loss that couples the variables or has no extension, or where the table
    /// would pass [`MAX_GRADIENT_BLOCKS`] numbers. Built once per objective, on first use.
    pub fn vertex_gradient_blocks(&self) -> Option<&[f64]> {
        self.shared_vertex_gradient_blocks().map(|b| &b[..])
    }

    /// [`Objective::vertex_gradient_blocks`] as the shared allocation that holds them: never
    /// changed once built, so a cache that keeps a clone can tell the same blocks by their
    /// address ([`std::sync::Arc::ptr_eq`]) instead of comparing L*K*K numbers.
    pub fn shared_vertex_gradient_blocks(&self) -> Option<&std::sync::Arc<[f64]>> {
        self.gradient_blocks
            .0
            .get_or_init(|| self.build_gradient_blocks().map(std::sync::Arc::from))
            .as_ref()
    }

    fn build_gradient_blocks(&self) -> Option<Vec<f64>> {
        if !self.loss.is_separable()
            || !self.has_extension()
            || self.l * self.k * self.k > MAX_GRADIENT_BLOCKS
        {
            return None;
        }
        let (l, k) = (self.l, self.k);
        let mut out = vec![0.0; l * k * k];
        let mut y = vec![0.0; l * k];
        let mut g = vec![0.0; l * k];
        for c in 0..k {
            // Every variable at category c: block l is that of any vertex with z_l = c.
            y.iter_mut().for_each(|v| *v = 0.0);
            for var in 0..l {
                y[var * k + c] = 1.0;
            }
            if !self.grad(&y, &mut g) {
                return None;
            }
            for var in 0..l {
                out[(var * k + c) * k..(var * k + c + 1) * k]
                    .copy_from_slice(&g[var * k..(var + 1) * k]);
            }
        }
        Some(out)
    }

    /// `f(y)` at a relaxed point (L*K numbers), or `None` where the loss has no extension.
    pub fn value(&self, y: &[f64]) -> Option<f64> {
        match &self.form {
            Form::Quadratic(q) => Some(q.value(y)),
            Form::Pnorm { b, p, .. } => {
                let total: f64 = y
                    .chunks_exact(self.k)
                    .zip(b)
                    .map(|(yl, bl)| pnorm_term(category_index(yl) - bl, *p))
                    .sum();
                Some(total / self.l as f64)
            }
            Form::Decoder(dec) => {
                let n = self.l * self.k;
                Some(
                    dec.v
                        .chunks_exact(n)
                        .zip(dec.c.iter().zip(&dec.target))
                        .map(|(row, (&c, &t))| {
                            let h = c + row.iter().zip(y).map(|(v, yv)| v * yv).sum::<f64>();
                            softplus(h) - t * h
                        })
                        .sum(),
                )
            }
            Form::Table(_) => None,
        }
    }

    /// `grad f(y)` into `out` (L*K numbers); `false` (and `out` untouched) where the loss has
    /// no extension.
    pub fn grad(&self, y: &[f64], out: &mut [f64]) -> bool {
        let k = self.k;
        match &self.form {
            Form::Quadratic(q) => {
                for ((o, v), b) in out.iter_mut().zip(y).zip(&q.beta) {
                    *o = 2.0 * q.alpha * v + b;
                }
            }
            Form::Pnorm { b, p, .. } => {
                let inv_l = 1.0 / self.l as f64;
                for ((yl, ol), bl) in y.chunks_exact(k).zip(out.chunks_exact_mut(k)).zip(b) {
                    let d = category_index(yl) - bl;
                    let slope = pnorm_slope(d, *p) * inv_l;
                    for (j, o) in ol.iter_mut().enumerate() {
                        *o = slope * j as f64;
                    }
                }
            }
            Form::Decoder(dec) => {
                let n = self.l * k;
                out.iter_mut().for_each(|o| *o = 0.0);
                for (row, (&c, &t)) in dec.v.chunks_exact(n).zip(dec.c.iter().zip(&dec.target)) {
                    let h = c + row.iter().zip(y).map(|(v, yv)| v * yv).sum::<f64>();
                    let r = sigmoid(h) - t;
                    for (o, v) in out.iter_mut().zip(row) {
                        *o += r * v;
                    }
                }
            }
            Form::Table(_) => return false,
        }
        true
    }

    /// For a loss that is a sum of per-variable terms, `f(z) = constant + sum_l terms[l*K + z_l]`:
    /// `(terms, constant)`. `None` for a loss that couples the variables.
    pub fn separable_terms(&self) -> Option<(Vec<f64>, f64)> {
        if !self.loss.is_separable() {
            return None;
        }
        // Relative to the vertex z = 0: term_l(j) = f(z with z_l = j) - f(0).
        let (l, k) = (self.l, self.k);
        let mut z = vec![0u32; l];
        let base = self.at_vertex(&z);
        let mut terms = vec![0.0; l * k];
        for var in 0..l {
            for j in 1..k {
                z[var] = j as u32;
                terms[var * k + j] = self.at_vertex(&z) - base;
            }
            z[var] = 0;
        }
        Some((terms, base))
    }
}

/// The last step of a separable loss's vertex value from its sum of terms `t` (see
/// [`Objective::separable_vertex_form`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VertexFinish {
    /// `t / count` (pnorm).
    Mean(f64),
    /// `base + t + gamma` (the quadratic losses).
    Affine {
        /// `alpha L`.
        base: f64,
        /// The constant.
        gamma: f64,
    },
}

impl VertexFinish {
    /// The vertex value of the sum of terms `t`.
    #[inline(always)]
    pub fn apply(self, t: f64) -> f64 {
        match self {
            Self::Mean(count) => t / count,
            Self::Affine { base, gamma } => base + t + gamma,
        }
    }
}

/// `|d|^p`.
fn pnorm_term(d: f64, p: f64) -> f64 {
    if p == 2.0 {
        d * d
    } else if p == 1.0 {
        d.abs()
    } else {
        d.abs().powf(p)
    }
}

/// `out[d] = sum_m table[m*K + z_dm]` for the draws `z` (draw-major, L each), each summed in
/// variable order from the neutral element of an iterator's `sum`, as
/// [`Objective::at_vertex`] sums its terms: eight draws at a time, so that eight independent
/// sums are in flight instead of one chain of L dependent additions.
#[inline(always)]
fn separable_sums(z: &[u32], l: usize, k: usize, table: &[f64], out: &mut [f64]) {
    const B: usize = 8;
    let zero: f64 = std::iter::empty::<f64>().sum();
    let n = out.len();
    let mut first = 0;
    while first + B <= n {
        let mut acc = [zero; B];
        let zs = &z[first * l..(first + B) * l];
        for var in 0..l {
            let t = &table[var * k..(var + 1) * k];
            for (d, a) in acc.iter_mut().enumerate() {
                *a += t[zs[d * l + var] as usize];
            }
        }
        out[first..first + B].copy_from_slice(&acc);
        first += B;
    }
    for (o, zi) in out[first..].iter_mut().zip(z[first * l..].chunks_exact(l)) {
        *o = zi
            .iter()
            .enumerate()
            .map(|(var, &c)| table[var * k + c as usize])
            .sum();
    }
}

/// `out[i] = sum_m table[m*K + zt[m*S + i]]` for S draws laid out variable-major
/// (`S = out.len()`), each summed in variable order from the neutral element of an iterator's
/// `sum`, as [`Objective::at_vertex`] sums its terms. Every category must be below K.
///
/// # Panics
/// If `zt` holds fewer than `L * S` numbers or `table` fewer than `L * K`.
#[inline(always)]
pub(crate) fn separable_sums_by_variable(
    zt: &[u32],
    l: usize,
    k: usize,
    table: &[f64],
    out: &mut [f64],
) {
    const B: usize = 8;
    let zero: f64 = std::iter::empty::<f64>().sum();
    let s = out.len();
    let (table, zt) = (&table[..l * k], &zt[..l * s]);
    // Eight draws at a time in registers: eight independent sums, each in variable order.
    let mut first = 0;
    while first + B <= s {
        let mut acc = [zero; B];
        for var in 0..l {
            let t = &table[var * k..(var + 1) * k];
            let z: &[u32; B] = zt[var * s + first..var * s + first + B]
                .try_into()
                .expect("eight draws");
            for (a, &c) in acc.iter_mut().zip(z) {
                *a += t[c as usize];
            }
        }
        out[first..first + B].copy_from_slice(&acc);
        first += B;
    }
    for (i, o) in out.iter_mut().enumerate().skip(first) {
        let mut acc = zero;
        for var in 0..l {
            acc += table[var * k + zt[var * s + i] as usize];
        }
        *o = acc;
    }
}

/// `out[c] = sum_m term(m, z'_m)` with `z' = z` but `z'_l = c`, for every c, summed in
/// variable order as an iterator's `sum` is (the prefix before `l` is that sum over the first
/// `l` terms, so it starts from the same neutral element).
#[inline(always)]
fn separable_conditional(
    z: &[u32],
    l: usize,
    k: usize,
    term: impl Fn(usize, u32) -> f64,
    out: &mut [f64],
) {
    let prefix: f64 = z[..l].iter().enumerate().map(|(m, &c)| term(m, c)).sum();
    for (c, o) in out.iter_mut().enumerate().take(k) {
        *o = prefix + term(l, c as u32);
    }
    for (m, &c) in z.iter().enumerate().skip(l + 1) {
        let t = term(m, c);
        out.iter_mut().for_each(|o| *o += t);
    }
}

/// `d/dd |d|^p = p |d|^(p-1) sign(d)` (the subgradient `sign(d)` at p = 1).
fn pnorm_slope(d: f64, p: f64) -> f64 {
    if p == 1.0 {
        d.signum() * f64::from(u8::from(d != 0.0))
    } else {
        p * d.abs().powf(p - 1.0) * d.signum()
    }
}

/// `c = sum_k k y[k]`, the category index at a vertex.
fn category_index(y: &[f64]) -> f64 {
    y.iter().enumerate().map(|(j, v)| j as f64 * v).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> Problem {
        let (l, k) = (3, 4);
        let mut p =
            Problem::free_logits(l, k, (0..l * k).map(|i| (i as f64 * 0.37).sin()).collect());
        p.t = (0..l * k).map(|i| (i as f64 * 0.71).cos()).collect();
        p.b = vec![0.4, 2.5, 1.0];
        p.exponent = 1.5;
        p.decoder = Some(Decoder {
            h: 5,
            v: (0..5 * l * k).map(|i| (i as f64 * 0.13).sin()).collect(),
            c: vec![0.1, -0.2, 0.3, 0.0, 0.5],
            target: vec![1.0, 0.0, 1.0, 1.0, 0.0],
        });
        p.table = (0..64).map(|i| (f64::from(i) * 0.3).cos()).collect();
        p
    }

    fn one_hot(z: &[u32], k: usize) -> Vec<f64> {
        let mut y = vec![0.0; z.len() * k];
        for (l, &c) in z.iter().enumerate() {
            y[l * k + c as usize] = 1.0;
        }
        y
    }

    #[test]
    fn vertex_values_equal_the_extension_at_one_hot_points() {
        let p = problem();
        for loss in [
            Loss::Squared,
            Loss::Seed,
            Loss::Linear,
            Loss::Pnorm,
            Loss::Decoder,
        ] {
            let obj = Objective::new(&p, loss);
            for z in [[0u32, 1, 2], [3, 3, 0], [1, 0, 3]] {
                let direct = obj.value(&one_hot(&z, 4)).unwrap();
                assert!((obj.at_vertex(&z) - direct).abs() < 1e-12, "{loss} {z:?}");
            }
        }
    }

    #[test]
    fn gradients_match_central_differences() {
        let p = problem();
        let y: Vec<f64> = (0..12).map(|i| 0.2 + 0.05 * (i as f64).sin()).collect();
        for loss in [
            Loss::Squared,
            Loss::Seed,
            Loss::Linear,
            Loss::Pnorm,
            Loss::Decoder,
        ] {
            let obj = Objective::new(&p, loss);
            let mut g = vec![0.0; 12];
            assert!(obj.grad(&y, &mut g));
            for j in 0..12 {
                let (mut a, mut b) = (y.clone(), y.clone());
                a[j] += 1e-6;
                b[j] -= 1e-6;
                let fd = (obj.value(&a).unwrap() - obj.value(&b).unwrap()) / 2e-6;
                assert!((fd - g[j]).abs() < 1e-6, "{loss} {j}: {fd} vs {}", g[j]);
            }
        }
        assert!(!Objective::new(&p, Loss::Table).grad(&y, &mut [0.0; 12]));
    }

    #[test]
    fn separable_terms_rebuild_every_vertex() {
        let p = problem();
        for loss in [Loss::Squared, Loss::Seed, Loss::Linear, Loss::Pnorm] {
            let obj = Objective::new(&p, loss);
            let (terms, c) = obj.separable_terms().unwrap();
            for i in 0..64u32 {
                let z = [i / 16, (i / 4) % 4, i % 4];
                let sum: f64 = c + (0..3).map(|l| terms[l * 4 + z[l] as usize]).sum::<f64>();
                assert!((sum - obj.at_vertex(&z)).abs() < 1e-12, "{loss} {z:?}");
            }
        }
        assert!(Objective::new(&p, Loss::Decoder)
            .separable_terms()
            .is_none());
    }

    /// 37 joint draws of L variables of K categories (not a multiple of the eight draws
    /// [`separable_sums`] takes at once).
    fn joint_draws(l: usize, k: usize) -> Vec<u32> {
        (0..37 * l as u32)
            .map(|i| (i * 7 + i / 5) % k as u32)
            .collect()
    }

    /// 7 variables of 3 categories with every loss's data: enough variables that a sum in
    /// another order gives other bits.
    fn wide() -> Problem {
        let (l, k) = (7, 3);
        let mut p =
            Problem::free_logits(l, k, (0..l * k).map(|i| (i as f64 * 0.53).sin()).collect());
        p.t = (0..l * k).map(|i| (i as f64 * 0.77).cos() / 3.0).collect();
        p.b = (0..l).map(|i| (i as f64 * 1.3).sin() + 1.0).collect();
        p.exponent = 1.5;
        p.decoder = Some(Decoder {
            h: 4,
            v: (0..4 * l * k).map(|i| (i as f64 * 0.11).sin()).collect(),
            c: vec![0.2, -0.1, 0.0, 0.4],
            target: vec![0.0, 1.0, 1.0, 0.0],
        });
        p.table = (0..3usize.pow(7)).map(|i| (i as f64 * 0.7).sin()).collect();
        p
    }

    #[test]
    fn batched_vertex_losses_are_each_vertex_loss_bit_for_bit() {
        for (mut p, l, k) in [(problem(), 3, 4), (wide(), 7, 3)] {
            let z = joint_draws(l, k);
            for exponent in [1.5, 1.0, 2.0] {
                p.exponent = exponent;
                for loss in Loss::ALL {
                    let obj = Objective::new(&p, loss);
                    let mut batch = vec![0.0; 37];
                    obj.at_vertices(&z, &mut batch);
                    // The same draws variable-major give the same bits.
                    let zt: Vec<u32> = (0..l * 37).map(|n| z[(n % 37) * l + n / 37]).collect();
                    let mut by_variable = vec![0.0; 37];
                    obj.at_vertices_by_variable(&zt, &mut by_variable);
                    let mut portable = vec![0.0; 37];
                    obj.at_vertices_by_variable_lanes(&zt, &mut portable);
                    for (i, (a, b)) in by_variable.iter().zip(&portable).enumerate() {
                        assert_eq!(a.to_bits(), batch[i].to_bits(), "{loss} draw {i}");
                        assert_eq!(b.to_bits(), batch[i].to_bits(), "{loss} draw {i}");
                    }
                    let mut scratch = vec![0u32; l];
                    let mut conditional = vec![0.0; k];
                    for (zi, &f) in z.chunks_exact(l).zip(&batch) {
                        assert_eq!(f.to_bits(), obj.at_vertex(zi).to_bits(), "{loss} {zi:?}");
                        for var in 0..l {
                            obj.conditional_vertices(zi, var, &mut scratch, &mut conditional);
                            for (c, &fc) in conditional.iter().enumerate() {
                                let mut zc = zi.to_vec();
                                zc[var] = c as u32;
                                let want = obj.at_vertex(&zc);
                                assert_eq!(fc.to_bits(), want.to_bits(), "{loss} {zc:?}");
                            }
                        }
                    }
                }
                // pnorm's table holds the terms the formula gives, summed in variable order.
                let obj = Objective::new(&p, Loss::Pnorm);
                for zi in z.chunks_exact(l) {
                    let mut total = -0.0;
                    for (&c, bl) in zi.iter().zip(&p.b) {
                        total += pnorm_term(f64::from(c) - bl, exponent);
                    }
                    let want = total / l as f64;
                    assert_eq!(
                        obj.at_vertex(zi).to_bits(),
                        want.to_bits(),
                        "p = {exponent}"
                    );
                }
            }
        }
    }

    #[test]
    fn gradient_blocks_are_the_gradient_at_every_vertex_bit_for_bit() {
        let p = problem();
        let z = joint_draws(3, 4);
        for loss in [Loss::Squared, Loss::Seed, Loss::Linear, Loss::Pnorm] {
            let obj = Objective::new(&p, loss);
            let blocks = obj.vertex_gradient_blocks().unwrap();
            let mut g = vec![0.0; 12];
            for zi in z.chunks_exact(3) {
                assert!(obj.grad(&one_hot(zi, 4), &mut g));
                for (var, &c) in zi.iter().enumerate() {
                    let start = (var * 4 + c as usize) * 4;
                    for j in 0..4 {
                        assert_eq!(
                            blocks[start + j].to_bits(),
                            g[var * 4 + j].to_bits(),
                            "{loss} {zi:?} {var} {j}"
                        );
                    }
                }
            }
        }
        for loss in [Loss::Decoder, Loss::Table] {
            assert!(Objective::new(&p, loss).vertex_gradient_blocks().is_none());
        }
    }

    #[test]
    fn table_is_row_major_with_z0_most_significant() {
        let p = problem();
        let obj = Objective::new(&p, Loss::Table);
        assert_eq!(obj.at_vertex(&[1, 2, 3]), p.table[16 + 2 * 4 + 3]);
    }
}
