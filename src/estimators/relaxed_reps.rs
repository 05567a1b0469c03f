//! The relaxed-sums lowering eight repetitions at a time: the sums of [`RelaxedMoments`] and
//! the Gumbel estimators' estimates of eight repetitions in structure-of-arrays form, one
//! repetition per f64 lane (of one AVX-512 register, or of two AVX2 registers: repetitions
//! 0..4 and 4..8), so that every per-repetition step (the moments of every pair of
//! categories, their in-order lane sums, the hit sums, the cells' quadratic-loss formulas)
//! runs four or eight repetitions per instruction with no transposes of the results. Each
//! lane performs exactly the operations, in exactly the order, of the one-repetition path
//! ([`super::apply::relaxed_moments`] then [`super::apply::estimate_one`]), so every
//! estimate has the same bits on either instruction set (tested). The draws themselves run
//! eight repetitions per step (two draws of them per AVX-512 step,
//! [`crate::draws::relaxed_avx512::step`], one draw per AVX2 step,
//! [`crate::draws::relaxed_avx2::step`]), so they land repetition-minor with no transposes
//! (K <= 64; per-repetition batches past it). The engine runs its relaxed-sums pass
//! through [`relaxed_sums_reps`] where [`RelaxedReps::serves`] says so (a CPU with AVX2 and
//! FMA; on AVX-512 only for S at most [`RELAXED_REPS_MAX_S`]), and the
//! one-repetition path elsewhere and for a block's last repetitions.

use super::{Context, Estimator, Lowering, RELAXED_BATCH};
use crate::draws::RelaxedTable;

/// Repetitions [`relaxed_sums_reps`] handles at once (one f64 lane each).
pub const RELAXED_REPS: usize = 8;

const B: usize = RELAXED_BATCH;

/// Largest S for which the engine takes [`relaxed_sums_reps`] (the same bits either way):
/// measured against the one-repetition path in one build on this 2-core Zen 4 machine (M
/// draws per CPU-second, two runs each), it is faster at S = 16 (17.2-17.6 against
/// 12.0-14.3) and S = 64 (23.4-24.5 against 19.5-22.8), even at S = 256 (24.1-25.9 against
/// 22.9-26.8), and slower at S = 4096 (24.4-27.1 against 28.0-29.8), where the draws
/// dominate and one repetition's batches of 64 draws already fill the registers.
pub const RELAXED_REPS_MAX_S: u32 = 256;

/// One relaxed-sums cell's parameters.
struct Cell<'a> {
    alpha2: f64,
    beta: &'a [f64],
    tau: f64,
    straight_through: bool,
    /// `1 / S`, as [`super::apply::estimate_one`] scales.
    inv: f64,
    /// Its loss's index (which `sum_yy beta` it reads).
    loss: usize,
}

/// A zeroed buffer of numbers that starts on a 64-byte boundary (a cache line), so that no
/// slot of eight repetitions (64 bytes of f64 or i64) straddles two lines. The heap aligns
/// to 16 bytes: unless an allocation happened to start on a line, every slot straddled two,
/// so every AVX-512 load of one touched two lines, and at 16 or 48 bytes past a line one
/// AVX2 load of each pair did.
#[derive(Debug)]
struct Lines<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy + Default> Lines<T> {
    /// `len` zeroes (`T::default()`), the first on a 64-byte boundary.
    fn new(len: usize) -> Self {
        let per_line = 64 / std::mem::size_of::<T>();
        let buf = vec![T::default(); len + per_line];
        let off = buf.as_ptr().align_offset(64);
        assert!(
            off < per_line,
            "a heap allocation is aligned to its element"
        );
        Self { buf, off, len }
    }
}

impl<T: Copy + Default> Clone for Lines<T> {
    /// A fresh buffer (the clone's own boundary), with the same numbers.
    fn clone(&self) -> Self {
        let mut copy = Self::new(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl<T> std::ops::Deref for Lines<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl<T> std::ops::DerefMut for Lines<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// Scratch of [`relaxed_sums_reps`] for K categories, kept between calls (one per worker).
#[derive(Clone, Debug)]
pub struct RelaxedReps {
    k: usize,
    /// One batch of draws per repetition: `y` (category-major, K*n at `r * K * B`), `z` and
    /// `y_z` (at `r * B`).
    draw_y: Vec<f32>,
    draw_z: Vec<u32>,
    draw_y_z: Vec<f32>,
    /// The batch in f64, repetition-minor: row j (0..K: `y_j`; K: `||y||^2`; K + 1: `y_z`),
    /// draw d, repetition r at `avx512::at(K, j, d) + r`.
    rows: Lines<f64>,
    /// The categories, repetition-minor: draw d, repetition r at `d * 8 + r`.
    z: Lines<i64>,
    /// Each pair `(c, c')` of rows' `dot` summed over the lanes so far (`(c * (K + 2) +
    /// c') * 8 + r`).
    lane_tot: Lines<f64>,
    /// The sums, 8 lanes each: `sum_y` (K), `sum_yy` (K*K), `sum_y_norm_sq` (K),
    /// `sum_y_yz` (K), `sum_hit` (K).
    sums: Lines<f64>,
    /// One cell's estimates, category-major (`c * 8 + r`).
    out: Lines<f64>,
    /// `sum_yy beta` of each loss (`(loss * K + c) * 8 + r`), and whether it is computed.
    ydb: Vec<f64>,
    ydb_done: Vec<bool>,
}

impl RelaxedReps {
    /// Scratch for K categories.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            draw_y: vec![0.0; RELAXED_REPS * k * B],
            draw_z: vec![0; RELAXED_REPS * B],
            draw_y_z: vec![0.0; RELAXED_REPS * B],
            rows: Lines::new((k + 2) * B * RELAXED_REPS),
            z: Lines::new(B * RELAXED_REPS),
            lane_tot: Lines::new(k * (k + 2) * RELAXED_REPS),
            sums: Lines::new((k * k + 4 * k) * RELAXED_REPS),
            out: Lines::new(k * RELAXED_REPS),
            ydb: Vec::new(),
            ydb_done: Vec::new(),
        }
    }

    /// Whether the engine's relaxed-sums pass takes [`relaxed_sums_reps`] at S draws: where
    /// the CPU runs it, and on AVX-512 where S is at most [`RELAXED_REPS_MAX_S`] (on AVX2 at
    /// every S).
    pub fn serves(s: u32) -> bool {
        match Self::path() {
            Some(RepsPath::Avx512) => s <= RELAXED_REPS_MAX_S,
            // Every S: measured on a 2-core Zen 3 without AVX-512 (criterion medians, M
            // draws/s, three rounds alternated in one sitting), the eight-repetition path is
            // faster than the one-repetition path at every S of the bench, S = 4096 included
            // (37.7 / 35.2 / 36.9 against 33.5 / 33.3 / 33.2): there the one-repetition path
            // sums each dot product's eight lanes across registers (transposes), which the
            // repetition-minor layout does not need.
            Some(RepsPath::Avx2) => true,
            None => false,
        }
    }

    /// Whether this CPU runs [`relaxed_sums_reps`] (AVX2 and FMA at least).
    pub fn available() -> bool {
        Self::path().is_some()
    }

    /// The instructions [`relaxed_sums_reps`] runs on here: AVX-512 in the AVX-512 tier,
    /// AVX2 in the AVX2 tier where the CPU also has FMA (see
    /// [`crate::fastmath::simd_tier`]), none otherwise.
    pub fn path() -> Option<RepsPath> {
        if crate::fastmath::has_avx512() {
            return Some(RepsPath::Avx512);
        }
        #[cfg(target_arch = "x86_64")]
        if crate::fastmath::has_avx2() && std::is_x86_feature_detected!("fma") {
            return Some(RepsPath::Avx2);
        }
        None
    }
}

/// The instruction sets of [`relaxed_sums_reps`] (the same bits on each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepsPath {
    /// One repetition per lane of an AVX-512 register (AVX-512F and FMA).
    Avx512,
    /// Repetitions 0..4 and 4..8 in two AVX2 registers (AVX2 and FMA).
    Avx2,
}

thread_local! {
    /// Each worker thread's [`RelaxedReps`], kept across calls, blocks and sweeps (scratch
    /// made per rayon task was a tenth of a megabyte zeroed per split: 4% of the S = 16
    /// bench).
    static SCRATCH: std::cell::RefCell<Option<RelaxedReps>> =
        const { std::cell::RefCell::new(None) };
}

/// Calls `f` with this thread's [`RelaxedReps`] for K categories (made on first use, or
/// when K changes).
pub fn with_scratch<R>(k: usize, f: impl FnOnce(&mut RelaxedReps) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|sc| sc.k != k) {
            *slot = Some(RelaxedReps::new(k));
        }
        f(slot.as_mut().expect("made just above"))
    })
}

/// The relaxed-sums estimates of repetitions `rep0 .. rep0 + 8` at sweep point `point`, S
/// draws each: for every cell `(loss index, estimator)` of `cells` (relaxed lowerings only),
/// `acc[r * W + i * K ..][..K]` (W = K times the number of cells) receives repetition
/// `rep0 + r`'s estimate of cell i, bit for bit what
/// [`super::apply::relaxed_moments`] and [`super::apply::estimate_one`] give for that
/// repetition. Runs on [`RelaxedReps::path`].
///
/// # Panics
/// If the CPU lacks AVX2 and FMA ([`RelaxedReps::available`]), if `acc` does not hold 8 W
/// numbers, or if a cell's estimator has no relaxed lowering or its context no quadratic
/// loss.
#[allow(clippy::too_many_arguments)]
pub fn relaxed_sums_reps(
    table: &RelaxedTable,
    contexts: &[Context],
    cells: &[(usize, &'static dyn Estimator)],
    key: [u32; 2],
    rep0: u32,
    point: u32,
    s: u32,
    scratch: &mut RelaxedReps,
    acc: &mut [f64],
) {
    let path = RelaxedReps::path().expect("relaxed_sums_reps needs AVX2 and FMA");
    let draws = (key, rep0, point, s);
    relaxed_sums_reps_on(path, table, contexts, cells, draws, scratch, acc);
}

/// [`relaxed_sums_reps`] on a given path (`at`: key, first repetition, point, S).
///
/// # Panics
/// As [`relaxed_sums_reps`], and if the CPU lacks the path's instructions.
fn relaxed_sums_reps_on(
    path: RepsPath,
    table: &RelaxedTable,
    contexts: &[Context],
    cells: &[(usize, &'static dyn Estimator)],
    (key, rep0, point, s): ([u32; 2], u32, u32, u32),
    scratch: &mut RelaxedReps,
    acc: &mut [f64],
) {
    let k = scratch.k;
    assert!(table.shifted_logits().len() == k && acc.len() == RELAXED_REPS * cells.len() * k);
    #[cfg(target_arch = "x86_64")]
    let runs = match path {
        RepsPath::Avx512 => crate::fastmath::detected_tier() >= crate::fastmath::SimdTier::Avx512,
        RepsPath::Avx2 => {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let runs = false;
    assert!(
        runs,
        "relaxed_sums_reps: this CPU lacks the {path:?} path's instructions"
    );
    let sc = scratch;
    sc.sums.iter_mut().for_each(|v| *v = 0.0);
    let mut first = 0u32;
    while first < s {
        let n = (s - first).min(B as u32) as usize;
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,fma")]
            fn add512(
                table: &RelaxedTable,
                key: [u32; 2],
                at: (u32, u32, u32),
                sc: &mut RelaxedReps,
                n: usize,
            ) {
                // SAFETY: compiled for AVX-512F and FMA, called only where the CPU has them
                // (asserted above); n <= B; `draw_rows` only for K <= MAX_K.
                unsafe {
                    if sc.k <= crate::draws::relaxed_avx512::MAX_K {
                        avx512::draw_rows(table, key, at, sc, n);
                    } else {
                        draw_batches(table, key, at, sc, n);
                        avx512::fill_rows(sc, n);
                    }
                    avx512::add_batch(sc, n);
                }
            }
            #[target_feature(enable = "avx2,fma")]
            fn add2(
                table: &RelaxedTable,
                key: [u32; 2],
                at: (u32, u32, u32),
                sc: &mut RelaxedReps,
                n: usize,
            ) {
                // SAFETY: compiled for AVX2 and FMA, called only where the CPU has them
                // (asserted above); n <= B; `draw_rows` only for K <= MAX_K.
                unsafe {
                    if sc.k <= crate::draws::relaxed_avx2::MAX_K {
                        avx2::draw_rows(table, key, at, sc, n);
                    } else {
                        draw_batches(table, key, at, sc, n);
                        fill_rows_portable(sc, n);
                    }
                    avx2::add_batch(sc, n);
                }
            }
            // SAFETY: the CPU has the path's instructions (asserted above).
            unsafe {
                match path {
                    RepsPath::Avx512 => add512(table, key, (rep0, point, first), sc, n),
                    RepsPath::Avx2 => add2(table, key, (rep0, point, first), sc, n),
                }
            }
        }
        first += n as u32;
    }
    let width = cells.len() * k;
    // `sum_yy beta` of each loss, computed for its first cell and shared by the others (the
    // same numbers, so the same bits).
    sc.ydb.resize(contexts.len() * k * RELAXED_REPS, 0.0);
    sc.ydb_done.clear();
    sc.ydb_done.resize(contexts.len(), false);
    for (i, &(li, est)) in cells.iter().enumerate() {
        let ctx = &contexts[li];
        let quad = ctx
            .quad
            .as_ref()
            .expect("the relaxed-sums lowering needs a quadratic loss");
        let Some(Lowering::Relaxed { straight_through }) = est.lowering() else {
            panic!("{} has no relaxed-sums lowering", est.id());
        };
        let cell = Cell {
            alpha2: 2.0 * quad.alpha,
            beta: &quad.beta[..k],
            tau: ctx.tau,
            straight_through,
            inv: 1.0 / f64::from(s),
            loss: li,
        };
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn estimate512(
                sc: &mut RelaxedReps,
                cell: &Cell<'_>,
                acc: &mut [f64],
                at: usize,
                width: usize,
            ) {
                // SAFETY: compiled for AVX-512F, called only where the CPU has it.
                unsafe {
                    avx512::estimate(sc, cell);
                    avx512::store(sc, acc, at, width);
                }
            }
            #[target_feature(enable = "avx2")]
            fn estimate2(
                sc: &mut RelaxedReps,
                cell: &Cell<'_>,
                acc: &mut [f64],
                at: usize,
                width: usize,
            ) {
                // SAFETY: compiled for AVX2, called only where the CPU has it.
                unsafe {
                    avx2::estimate(sc, cell);
                    avx2::store(sc, acc, at, width);
                }
            }
            // SAFETY: the CPU has the path's instructions (asserted above).
            unsafe {
                match path {
                    RepsPath::Avx512 => estimate512(sc, &cell, acc, i * k, width),
                    RepsPath::Avx2 => estimate2(sc, &cell, acc, i * k, width),
                }
            }
        }
    }
}

/// Where row j (0..K: `y_j`; K: `||y||^2`; K + 1: `y_z`), draw d of a batch of n draws
/// starts in `sc.rows` (eight repetitions from there), `nc = ceil(n / 8)`: grouped by `d % 8`
/// first, so that the draws of one lane of every row (what a tile of `add_batch` reads for
/// one `l`) lie together, 6 KiB at K = 10 and n = 64; and packed to the batch's n, so that a
/// short batch's rows are one block (12 KiB at K = 10 and n = 16). The row-major layout of
/// earlier versions put row j at j * 4 KiB: the nine or more rows one tile streamed per lane
/// overflowed the 32 KiB L1 (and fell in one cache set), so every tile reread them from L2;
/// and a layout of a full batch's stride (`nc = 8`) for n = 16 used two cache lines in eight,
/// all of them in a quarter of the L1's sets, so the 192 lines of the batch fought over
/// 16 sets of 8 ways.
#[inline(always)]
fn at(k: usize, nc: usize, j: usize, d: usize) -> usize {
    (((d % 8) * (k + 2) + j) * nc + d / 8) * RELAXED_REPS
}

/// The most draws of a batch for which `add_batch` runs its tiles with every lane inside
/// (`tile_lanes`): the batch's rows are then at most (K + 2) x 32 x 64 bytes, 24 KiB at K =
/// 10, within the 32 KiB L1.
const LANES_INNER_MAX_N: usize = 32;

/// Draws `first .. first + n` of each of the eight repetitions into `sc.draw_*`, one
/// [`RelaxedTable::draw_batch`] per repetition (the path of K above the draws' `MAX_K`).
fn draw_batches(
    table: &RelaxedTable,
    key: [u32; 2],
    (rep0, point, first): (u32, u32, u32),
    sc: &mut RelaxedReps,
    n: usize,
) {
    let k = sc.k;
    for r in 0..RELAXED_REPS {
        table.draw_batch(
            key,
            rep0.wrapping_add(r as u32),
            point,
            first,
            n,
            &mut sc.draw_y[r * k * B..r * k * B + k * n],
            &mut sc.draw_z[r * B..r * B + n],
            &mut sc.draw_y_z[r * B..r * B + n],
        );
    }
}

/// The rows and categories of a batch of n draws (`sc.rows`, `sc.z`) from the eight
/// repetitions' batches in `sc.draw_*`, one number at a time (the AVX2 path's K above the
/// draws' `MAX_K`): `||y||^2` summed over c in order from +0.0, as everywhere (the squares
/// of f32 numbers are exact in f64, so this is also the fused form's sum).
fn fill_rows_portable(sc: &mut RelaxedReps, n: usize) {
    let (k, nc) = (sc.k, n.div_ceil(8));
    for r in 0..RELAXED_REPS {
        for d in 0..n {
            let mut q = 0.0f64;
            for c in 0..k {
                let v = f64::from(sc.draw_y[r * k * B + c * n + d]);
                sc.rows[at(k, nc, c, d) + r] = v;
                q += v * v;
            }
            sc.rows[at(k, nc, k, d) + r] = q;
            sc.rows[at(k, nc, k + 1, d) + r] = f64::from(sc.draw_y_z[r * B + d]);
            sc.z[d * RELAXED_REPS + r] = i64::from(sc.draw_z[r * B + d]);
        }
    }
}

/// The f64 vector operations of [`shared`] on one register of repetitions (eight
/// in AVX-512, four in AVX2), so that [`shared`] is written once for both paths. Every
/// method is `#[inline(always)]` into the path's `#[target_feature]` function.
#[cfg(target_arch = "x86_64")]
trait Lanes: Copy {
    /// All lanes +0.0.
    unsafe fn zero() -> Self;
    /// All lanes `v`.
    unsafe fn splat(v: f64) -> Self;
    /// The lanes at `p` (unaligned).
    unsafe fn load(p: *const f64) -> Self;
    /// Stores the lanes at `p` (unaligned).
    unsafe fn store(p: *mut f64, v: Self);
    /// `a + b` per lane.
    unsafe fn add(a: Self, b: Self) -> Self;
    /// `a - b` per lane.
    unsafe fn sub(a: Self, b: Self) -> Self;
    /// `a * b` per lane.
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// `a / b` per lane.
    unsafe fn div(a: Self, b: Self) -> Self;
    /// `a * b + c` per lane, rounded once.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
}

#[cfg(target_arch = "x86_64")]
macro_rules! impl_lanes {
    ($t:ty, $zero:ident, $splat:ident, $load:ident, $store:ident, $add:ident, $sub:ident, $mul:ident, $div:ident, $fmadd:ident $(,)?) => {
        impl Lanes for $t {
            #[inline(always)]
            unsafe fn zero() -> Self {
                std::arch::x86_64::$zero()
            }
            #[inline(always)]
            unsafe fn splat(v: f64) -> Self {
                std::arch::x86_64::$splat(v)
            }
            #[inline(always)]
            unsafe fn load(p: *const f64) -> Self {
                std::arch::x86_64::$load(p)
            }
            #[inline(always)]
            unsafe fn store(p: *mut f64, v: Self) {
                std::arch::x86_64::$store(p, v)
            }
            #[inline(always)]
            unsafe fn add(a: Self, b: Self) -> Self {
                std::arch::x86_64::$add(a, b)
            }
            #[inline(always)]
            unsafe fn sub(a: Self, b: Self) -> Self {
                std::arch::x86_64::$sub(a, b)
            }
            #[inline(always)]
            unsafe fn mul(a: Self, b: Self) -> Self {
                std::arch::x86_64::$mul(a, b)
            }
            #[inline(always)]
            unsafe fn div(a: Self, b: Self) -> Self {
                std::arch::x86_64::$div(a, b)
            }
            #[inline(always)]
            unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
                std::arch::x86_64::$fmadd(a, b, c)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
impl_lanes!(
    std::arch::x86_64::__m512d,
    _mm512_setzero_pd,
    _mm512_set1_pd,
    _mm512_loadu_pd,
    _mm512_storeu_pd,
    _mm512_add_pd,
    _mm512_sub_pd,
    _mm512_mul_pd,
    _mm512_div_pd,
    _mm512_fmadd_pd,
);
#[cfg(target_arch = "x86_64")]
impl_lanes!(
    std::arch::x86_64::__m256d,
    _mm256_setzero_pd,
    _mm256_set1_pd,
    _mm256_loadu_pd,
    _mm256_storeu_pd,
    _mm256_add_pd,
    _mm256_sub_pd,
    _mm256_mul_pd,
    _mm256_div_pd,
    _mm256_fmadd_pd,
);

/// The steps both paths share, on one register of repetitions ([`Lanes`]): the pair sums
/// through their tiles (every `dot` of a row with its partners, one lane of draws or all
/// eight at once) and the cells' estimates. Each path adds its draws, its hit sums and its
/// stores around them.
#[cfg(target_arch = "x86_64")]
mod shared {
    use super::{at, Cell, Lanes, LANES_INNER_MAX_N};

    /// Where [`tile`] reads and writes: the rows of an `add_batch` and its lane sums (from
    /// the first repetition of the register, a half's on AVX2), row `c` and its partners
    /// `p..`, lane `l` of a batch of n draws.
    pub(super) struct Tile {
        pub(super) rows: *const f64,
        pub(super) lane_tot: *mut f64,
        pub(super) k: usize,
        pub(super) c: usize,
        pub(super) p: usize,
        pub(super) n: usize,
        pub(super) l: usize,
    }

    /// Lane l of the `dot`s of row c with its W partners `p..p + W` (in bounds: p + W <= K +
    /// 2), into their lane sums; returns W. Per lane, the arithmetic of `dot`: lane l (the
    /// draws `8 i + l`) over the chunks from +0.0, the lanes summed in order (lane 0 stored,
    /// the others added); the remainder is `add_batch`'s.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions and FMA; the pointers in bounds of the rows (K +
    /// 2 of n draws) and the lane sums (K x (K + 2)).
    #[inline(always)]
    pub(super) unsafe fn tile<V: Lanes, const W: usize>(g: &Tile) -> usize {
        let Tile {
            lane_tot,
            k,
            c,
            p,
            l,
            ..
        } = *g;
        let lane = lane_dots::<V, W>(g, l);
        for (t, v) in lane.iter().enumerate() {
            let q = lane_tot.add((c * (k + 2) + p + t) * 8);
            let sum = if l == 0 { *v } else { V::add(V::load(q), *v) };
            V::store(q, sum);
        }
        W
    }

    /// Lane l's sums of the `dot`s of row c with its W partners `p..p + W` (`g.l` unused):
    /// over the chunks from +0.0, one FMA a draw (the products of two f32 numbers are exact in
    /// f64), but a separate multiply and add for the partner `||y||^2`, which is no f32
    /// number (done again, so that the loop has no branch).
    ///
    /// # Safety
    /// As [`tile`].
    #[inline(always)]
    unsafe fn lane_dots<V: Lanes, const W: usize>(g: &Tile, l: usize) -> [V; W] {
        let Tile {
            rows, k, c, p, n, ..
        } = *g;
        let chunks = n / 8;
        let nc = n.div_ceil(8);
        let at = |j: usize, d: usize| at(k, nc, j, d);
        let norm_slot = if (p..p + W).contains(&k) { k - p } else { W };
        let mut lane = [V::zero(); W];
        for i in 0..chunks {
            let a = V::load(rows.add(at(c, 8 * i + l)));
            for (t, v) in lane.iter_mut().enumerate() {
                let b = V::load(rows.add(at(p + t, 8 * i + l)));
                *v = V::fmadd(a, b, *v);
            }
        }
        if norm_slot < W {
            let mut v = V::zero();
            for i in 0..chunks {
                let a = V::load(rows.add(at(c, 8 * i + l)));
                let b = V::load(rows.add(at(k, 8 * i + l)));
                v = V::add(v, V::mul(a, b));
            }
            // Every slot by a constant index (an index known only at run time kept the
            // whole array in memory, a store after every FMA of the loop above).
            for (t, slot) in lane.iter_mut().enumerate() {
                if t == norm_slot {
                    *slot = v;
                }
            }
        }
        lane
    }

    /// [`tile`] for every lane l at once (`g.l` unused): per lane the same FMAs over the
    /// chunks, and the lanes' sums added in order in registers, stored once.
    ///
    /// # Safety
    /// As [`tile`].
    #[inline(always)]
    pub(super) unsafe fn tile_lanes<V: Lanes, const W: usize>(g: &Tile) -> usize {
        let Tile {
            lane_tot, k, c, p, ..
        } = *g;
        let mut tot = [V::zero(); W];
        for l in 0..8 {
            let lane = lane_dots::<V, W>(g, l);
            for (t, v) in lane.iter().enumerate() {
                tot[t] = if l == 0 { *v } else { V::add(tot[t], *v) };
            }
        }
        for (t, v) in tot.iter().enumerate() {
            V::store(lane_tot.add((c * (k + 2) + p + t) * 8), *v);
        }
        W
    }

    /// Adds every sum of a batch of n draws but the hit sums, on one register of
    /// repetitions from `rows`, `sums` and `lane_tot` (each at its first repetition: a
    /// half's on AVX2): `sum_y`, then every pair's `dot` through the tiles (with every lane
    /// inside up to `INNER_W` partners a step: what the path's registers hold) or, where
    /// `BLOCKED`, through [`pair_dots_blocked`]'s blocks of two rows (the AVX2 path: its
    /// one-row tiles ran as chains of dependent multiply-adds, their addresses spilled to
    /// the stack; the blocks gave 10-15% at S = 16 on a Zen 3, measured in the eleventh
    /// sitting of `results/benchmarks.md`; the AVX-512 path keeps the tiles it was tuned
    /// with, unmeasured on blocks), then each pair's lane sum and remainder into `sum_yy`,
    /// `sum_y_norm_sq` and `sum_y_yz`. Per lane the arithmetic of
    /// [`crate::estimators::RelaxedMoments::add_batch_lanes`], either way.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions and FMA; the pointers in bounds of the rows (K +
    /// 2 of n draws, n <= B), the sums and the lane sums (K x (K + 2)).
    #[inline(always)]
    pub(super) unsafe fn add_pair_sums<V: Lanes, const INNER_W: usize, const BLOCKED: bool>(
        (rows, sums, lane_tot): (*const f64, *mut f64, *mut f64),
        k: usize,
        n: usize,
    ) {
        let chunks = n / 8;
        let full = 8 * chunks;
        let nc = n.div_ceil(8);
        let at = |j: usize, d: usize| at(k, nc, j, d);
        let sy = 0;
        // sum_y: `lane_sum` of each row: lane l over the chunks from +0.0, the lanes in
        // order, then the remainder one term at a time.
        for c in 0..k {
            let mut tot = V::zero();
            for l in 0..8 {
                let mut lane = V::zero();
                for i in 0..chunks {
                    lane = V::add(lane, V::load(rows.add(at(c, 8 * i + l))));
                }
                tot = if l == 0 { lane } else { V::add(tot, lane) };
            }
            for d in full..n {
                tot = V::add(tot, V::load(rows.add(at(c, d))));
            }
            let p = sums.add((sy + c) * 8);
            V::store(p, V::add(V::load(p), tot));
        }
        // Every `dot` of row c with its partners c..K + 2 (K: ||y||^2, K + 1: y_z), up to
        // eight partners a step (8, 4, 2 or 1: no partner computed twice), one lane l of
        // every pair at a time (what that reads stays in L1), the lanes' sums in order in
        // `lane_tot`.
        // A small batch's rows fit in L1 whole: every lane of a tile's pairs at once, their
        // lane sums kept in registers (the same additions in the same order).
        let lanes_inner = n <= LANES_INNER_MAX_N;
        // The tiles' passes over the lanes: none where the blocks compute the dots.
        let tile_passes = match (BLOCKED, lanes_inner) {
            (true, _) => {
                pair_dots_blocked::<V, 4, 2>((rows, lane_tot), k, n);
                0
            }
            (false, true) => 1,
            (false, false) => 8,
        };
        for l in 0..tile_passes {
            for c in 0..k {
                let mut p = c;
                while p < k + 2 {
                    let left = k + 2 - p;
                    let geo = Tile {
                        rows,
                        lane_tot,
                        k,
                        c,
                        p,
                        n,
                        l,
                    };
                    p += match (lanes_inner, left) {
                        (true, 8..) if INNER_W >= 8 => tile_lanes::<V, 8>(&geo),
                        (true, 4..) => tile_lanes::<V, 4>(&geo),
                        (true, 2..) => tile_lanes::<V, 2>(&geo),
                        (true, _) => tile_lanes::<V, 1>(&geo),
                        (false, 8..) => tile::<V, 8>(&geo),
                        (false, 4..) => tile::<V, 4>(&geo),
                        (false, 2..) => tile::<V, 2>(&geo),
                        (false, _) => tile::<V, 1>(&geo),
                    };
                }
            }
        }
        // Each pair's lane sum, plus the remainder's sum (from -0.0) where there is one,
        // added to its sums.
        let (syy, snorm, syz) = (k, k + k * k, 2 * k + k * k);
        for c in 0..k {
            for c2 in c..k + 2 {
                let mut v = V::load(lane_tot.add((c * (k + 2) + c2) * 8));
                if full < n {
                    let mut rest = V::splat(-0.0);
                    for d in full..n {
                        let a = V::load(rows.add(at(c, d)));
                        let b = V::load(rows.add(at(c2, d)));
                        rest = V::add(rest, V::mul(a, b));
                    }
                    v = V::add(v, rest);
                }
                let add_to = |slot: usize| {
                    let q = sums.add(slot * 8);
                    V::store(q, V::add(V::load(q), v));
                };
                if c2 < k {
                    add_to(syy + c * k + c2);
                    if c2 != c {
                        add_to(syy + c2 * k + c);
                    }
                } else if c2 == k {
                    add_to(snorm + c);
                } else {
                    add_to(syz + c);
                }
            }
        }
    }

    /// Lane `l`'s sums over the chunks of the dots of C rows with P partners, from +0.0 in
    /// chunk order: `acc[i][t]` of row `a[i]` with partner `b[t]` (offsets in `rows` of
    /// each row's lane-l slots, one chunk every eight numbers), by fused multiply-adds
    /// where `FUSED` (exact: the products of two f32 numbers are exact in f64), else by a
    /// multiply and an add (the partner `||y||^2`, which is no f32 number). C x P
    /// independent chains, each row and partner loaded once a chunk.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions and FMA; every offset plus `8 * chunks` in
    /// bounds of `rows`.
    #[inline(always)]
    unsafe fn block_lane<V: Lanes, const C: usize, const P: usize, const FUSED: bool>(
        rows: *const f64,
        a: [usize; C],
        b: [usize; P],
        chunks: usize,
    ) -> [[V; P]; C] {
        let mut acc = [[V::zero(); P]; C];
        for i in 0..chunks {
            let x: [V; C] = std::array::from_fn(|r| V::load(rows.add(a[r] + 8 * i)));
            for (t, &bt) in b.iter().enumerate() {
                let y = V::load(rows.add(bt + 8 * i));
                for (r, row) in acc.iter_mut().enumerate() {
                    row[t] = if FUSED {
                        V::fmadd(x[r], y, row[t])
                    } else {
                        V::add(row[t], V::mul(x[r], y))
                    };
                }
            }
        }
        acc
    }

    /// The dots of rows `cs` with partners `ps` into their lane sums in `lane_tot`: of lane
    /// `l` alone (added to the lanes before it, stored as lane 0) or, where `every_lane`,
    /// of all eight lanes in order in registers. Only pairs `(cs[i], ps[t])` with `keep(i,
    /// t)` are written (a block's padding and the pairs below the diagonal are computed and
    /// dropped).
    ///
    /// # Safety
    /// As [`block_lane`], for the lanes' offsets of `at`.
    #[inline(always)]
    unsafe fn block<V: Lanes, const C: usize, const P: usize, const FUSED: bool>(
        (rows, lane_tot): (*const f64, *mut f64),
        (k, nc, chunks): (usize, usize, usize),
        cs: [usize; C],
        ps: [usize; P],
        l: usize,
        every_lane: bool,
        keep: impl Fn(usize, usize) -> bool,
    ) {
        let offsets = |l: usize| (cs.map(|c| at(k, nc, c, l)), ps.map(|p| at(k, nc, p, l)));
        let slot = |i: usize, t: usize| lane_tot.add((cs[i] * (k + 2) + ps[t]) * 8);
        if every_lane {
            let (a, b) = offsets(0);
            let mut tot = block_lane::<V, C, P, FUSED>(rows, a, b, chunks);
            for l in 1..8 {
                let (a, b) = offsets(l);
                let lane = block_lane::<V, C, P, FUSED>(rows, a, b, chunks);
                for (tr, lr) in tot.iter_mut().zip(&lane) {
                    for (t, v) in tr.iter_mut().zip(lr) {
                        *t = V::add(*t, *v);
                    }
                }
            }
            for (i, tr) in tot.iter().enumerate() {
                for (t, v) in tr.iter().enumerate() {
                    if keep(i, t) {
                        V::store(slot(i, t), *v);
                    }
                }
            }
        } else {
            let (a, b) = offsets(l);
            let lane = block_lane::<V, C, P, FUSED>(rows, a, b, chunks);
            for (i, lr) in lane.iter().enumerate() {
                for (t, v) in lr.iter().enumerate() {
                    if keep(i, t) {
                        let q = slot(i, t);
                        V::store(q, if l == 0 { *v } else { V::add(V::load(q), *v) });
                    }
                }
            }
        }
    }

    /// Every `dot` of row c < K with its partners c..K + 2 into `lane_tot`, as the tiles of
    /// [`add_pair_sums`] compute them (the same operations per pair and lane), in blocks of
    /// two rows and `P` partners (`P_INNER` where every lane runs inside a block): rows
    /// `c0, c0 + 1` meet the f32 partners `c0..K` and `K + 1` (`y_z`) by fused multiply-adds,
    /// the pair `(c0 + 1, c0)` and the padding of a short block computed and dropped; then
    /// four rows at a time meet `||y||^2` (row K) by multiplies and adds.
    ///
    /// # Safety
    /// As [`add_pair_sums`].
    #[inline(always)]
    unsafe fn pair_dots_blocked<V: Lanes, const P: usize, const P_INNER: usize>(
        (rows, lane_tot): (*const f64, *mut f64),
        k: usize,
        n: usize,
    ) {
        let (chunks, nc) = (n / 8, n.div_ceil(8));
        let every_lane = n <= LANES_INNER_MAX_N;
        let dims = (k, nc, chunks);
        let ptrs = (rows, lane_tot);
        // The partners of rows c0.. that are f32 numbers: c0..K, then y_z (row K + 1).
        let partner = |c0: usize, t: usize| if c0 + t < k { c0 + t } else { k + 1 };
        for l in 0..if every_lane { 1 } else { 8 } {
            for c0 in (0..k).step_by(2) {
                let rows_here = (k - c0).min(2);
                let cs = [c0, (c0 + 1).min(k - 1)];
                let count = k - c0 + 1;
                let mut t0 = 0;
                while t0 < count {
                    let real = (count - t0).min(if every_lane { P_INNER } else { P });
                    // Row i meets partner t if both are real and the partner is at or past
                    // the row (y_z, past the last row, always is).
                    let keep = |i: usize, t: usize| i < rows_here && t < real && t0 + t >= i;
                    if every_lane {
                        let ps = std::array::from_fn(|t| partner(c0, t0 + t.min(real - 1)));
                        block::<V, 2, P_INNER, true>(ptrs, dims, cs, ps, l, true, keep);
                        t0 += P_INNER;
                    } else {
                        let ps = std::array::from_fn(|t| partner(c0, t0 + t.min(real - 1)));
                        block::<V, 2, P, true>(ptrs, dims, cs, ps, l, false, keep);
                        t0 += P;
                    }
                }
            }
            for c0 in (0..k).step_by(4) {
                let rows_here = (k - c0).min(4);
                let cs = std::array::from_fn(|i| (c0 + i).min(k - 1));
                let keep = |i: usize, _t: usize| i < rows_here;
                block::<V, 4, 1, false>(ptrs, dims, cs, [k], l, every_lane, keep);
            }
        }
    }

    /// One cell's estimates of the repetitions of one register into `out` (category-major,
    /// `c * 8`), from the sums at `s` and each category's `sum_yy beta` at `ydbs` (computed
    /// there first unless `ydb_done`): per lane,
    /// [`crate::estimators::add_quadratic_relaxed_sum`] into zeros, then the scaling by `1 /
    /// S` of `estimate_one`.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions; the pointers in bounds of K categories' sums,
    /// `sum_yy beta` and estimates.
    #[inline(always)]
    pub(super) unsafe fn estimate<V: Lanes>(
        (s, ydbs, out): (*const f64, *mut f64, *mut f64),
        cell: &Cell<'_>,
        k: usize,
        ydb_done: bool,
    ) {
        let (sy, syy) = (0, k);
        let (snorm, syz, shit) = (k + k * k, 2 * k + k * k, 3 * k + k * k);
        let a2 = V::splat(cell.alpha2);
        let (tau, inv) = (V::splat(cell.tau), V::splat(cell.inv));
        if !ydb_done {
            // `sum_yy_dot`: for each c, the sum over c' in order from -0.0 of
            // sum_yy[c'][c] beta[c']; four c at once (independent chains of additions).
            for c0 in (0..k).step_by(4) {
                let m = (k - c0).min(4);
                let mut ydb = [V::splat(-0.0); 4];
                for (c2, &b) in cell.beta.iter().enumerate() {
                    let b = V::splat(b);
                    for (j, y) in ydb.iter_mut().enumerate().take(m) {
                        let v = V::load(s.add((syy + c2 * k + c0 + j) * 8));
                        *y = V::add(*y, V::mul(v, b));
                    }
                }
                for (j, y) in ydb.iter().enumerate().take(m) {
                    V::store(ydbs.add((c0 + j) * 8), *y);
                }
            }
        }
        for c in 0..k {
            let ydb = V::load(ydbs.add(c * 8));
            let (x, w) = if cell.straight_through {
                (shit + c, syz + c)
            } else {
                (syy + c * k + c, snorm + c)
            };
            let term = V::sub(
                V::sub(
                    V::add(
                        V::mul(a2, V::load(s.add(x * 8))),
                        V::mul(V::splat(cell.beta[c]), V::load(s.add((sy + c) * 8))),
                    ),
                    V::mul(a2, V::load(s.add(w * 8))),
                ),
                ydb,
            );
            let v = V::add(V::zero(), V::div(term, tau));
            V::store(out.add(c * 8), V::mul(v, inv));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::shared::add_pair_sums;
    use super::{at, Cell, RelaxedReps, RelaxedTable, B, RELAXED_REPS};
    use std::arch::x86_64::*;

    /// `r[i]` lane j to `t[j]` lane i.
    #[inline(always)]
    unsafe fn transpose(r: [__m512d; 8]) -> [__m512d; 8] {
        let a = [
            _mm512_unpacklo_pd(r[0], r[1]),
            _mm512_unpackhi_pd(r[0], r[1]),
            _mm512_unpacklo_pd(r[2], r[3]),
            _mm512_unpackhi_pd(r[2], r[3]),
            _mm512_unpacklo_pd(r[4], r[5]),
            _mm512_unpackhi_pd(r[4], r[5]),
            _mm512_unpacklo_pd(r[6], r[7]),
            _mm512_unpackhi_pd(r[6], r[7]),
        ];
        let lo4 = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
        let hi4 = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
        let b = [
            _mm512_permutex2var_pd(a[0], lo4, a[2]),
            _mm512_permutex2var_pd(a[0], hi4, a[2]),
            _mm512_permutex2var_pd(a[1], lo4, a[3]),
            _mm512_permutex2var_pd(a[1], hi4, a[3]),
            _mm512_permutex2var_pd(a[4], lo4, a[6]),
            _mm512_permutex2var_pd(a[4], hi4, a[6]),
            _mm512_permutex2var_pd(a[5], lo4, a[7]),
            _mm512_permutex2var_pd(a[5], hi4, a[7]),
        ];
        const LO: i32 = 0b01_00_01_00;
        const HI: i32 = 0b11_10_11_10;
        [
            _mm512_shuffle_f64x2::<LO>(b[0], b[4]),
            _mm512_shuffle_f64x2::<LO>(b[2], b[6]),
            _mm512_shuffle_f64x2::<LO>(b[1], b[5]),
            _mm512_shuffle_f64x2::<LO>(b[3], b[7]),
            _mm512_shuffle_f64x2::<HI>(b[0], b[4]),
            _mm512_shuffle_f64x2::<HI>(b[2], b[6]),
            _mm512_shuffle_f64x2::<HI>(b[1], b[5]),
            _mm512_shuffle_f64x2::<HI>(b[3], b[7]),
        ]
    }

    /// The rows and categories of a batch of n draws (`sc.rows`, `sc.z`) from the eight
    /// repetitions' batches in `sc.draw_*` (the path of K above
    /// [`crate::draws::relaxed_avx512::MAX_K`]), through 8 x 8 transposes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and FMA; n <= B.
    #[inline(always)]
    pub(super) unsafe fn fill_rows(sc: &mut RelaxedReps, n: usize) {
        let k = sc.k;
        assert!(n <= B && sc.rows.len() >= (k + 2) * B * 8 && sc.z.len() >= B * 8);
        assert!(sc.draw_y.len() >= 8 * k * B && sc.draw_y_z.len() >= 8 * B);
        assert!(sc.draw_z.len() >= 8 * B);
        let chunks = n / 8;
        let full = 8 * chunks;
        let rows = sc.rows.as_mut_ptr();
        // In bounds: row j < K + 2, draw d < n <= B.
        let nc = n.div_ceil(8);
        let at = |j: usize, d: usize| at(k, nc, j, d);
        // y_c (rows 0..K) and y_z (row K + 1), repetition-minor.
        for j in 0..=k {
            let (src, stride, dst) = if j < k {
                (sc.draw_y.as_ptr().add(j * n), k * B, j)
            } else {
                (sc.draw_y_z.as_ptr(), B, k + 1)
            };
            for i in 0..chunks {
                let mut r = [_mm512_setzero_pd(); 8];
                for (rep, v) in r.iter_mut().enumerate() {
                    *v = _mm512_cvtps_pd(_mm256_loadu_ps(src.add(rep * stride + 8 * i)));
                }
                let t = transpose(r);
                for (l, v) in t.iter().enumerate() {
                    _mm512_storeu_pd(rows.add(at(dst, 8 * i + l)), *v);
                }
            }
            for d in full..n {
                let mut lanes = [0f64; 8];
                for (rep, v) in lanes.iter_mut().enumerate() {
                    *v = f64::from(*src.add(rep * stride + d));
                }
                _mm512_storeu_pd(rows.add(at(dst, d)), _mm512_loadu_pd(lanes.as_ptr()));
            }
        }
        // ||y||^2 (row K): sum over c in order from +0.0 of the exact squares, eight draws
        // at once (independent chains), then the rest one at a time.
        for i in 0..chunks {
            let mut q = [_mm512_setzero_pd(); 8];
            for c in 0..k {
                for (l, q) in q.iter_mut().enumerate() {
                    let v = _mm512_loadu_pd(rows.add(at(c, 8 * i + l)));
                    *q = _mm512_fmadd_pd(v, v, *q);
                }
            }
            for (l, q) in q.iter().enumerate() {
                _mm512_storeu_pd(rows.add(at(k, 8 * i + l)), *q);
            }
        }
        for d in full..n {
            let mut q = _mm512_setzero_pd();
            for c in 0..k {
                let v = _mm512_loadu_pd(rows.add(at(c, d)));
                q = _mm512_fmadd_pd(v, v, q);
            }
            _mm512_storeu_pd(rows.add(at(k, d)), q);
        }
        // The categories, repetition-minor.
        let z = sc.z.as_mut_ptr();
        let stride = _mm256_setr_epi32(
            0,
            B as i32,
            2 * B as i32,
            3 * B as i32,
            4 * B as i32,
            5 * B as i32,
            6 * B as i32,
            7 * B as i32,
        );
        for d in 0..n {
            // In bounds: repetition r's z of draw d is at r * B + d < 8 B.
            let zs = _mm256_i32gather_epi32::<4>(sc.draw_z.as_ptr().add(d).cast(), stride);
            _mm512_storeu_si512(z.add(d * 8).cast(), _mm512_cvtepu32_epi64(zs));
        }
    }

    /// The rows and categories of draws `first .. first + n` of repetitions `rep0 .. rep0 +
    /// 8` straight from the draws, two draws of the eight repetitions a step
    /// ([`crate::draws::relaxed_avx512::step`], lane i: draw `first + d + i / 8`, repetition
    /// `rep0 + i % 8`), so already repetition-minor: each lane's numbers are those of
    /// [`RelaxedTable::draw_batch`], and `||y||^2` is the sum of [`fill_rows`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F and FMA; n <= B; K at most
    /// [`crate::draws::relaxed_avx512::MAX_K`].
    #[inline(always)]
    pub(super) unsafe fn draw_rows(
        table: &RelaxedTable,
        key: [u32; 2],
        (rep0, point, first): (u32, u32, u32),
        sc: &mut RelaxedReps,
        n: usize,
    ) {
        use crate::draws::relaxed_avx512::{step, RoundKeys, MAX_K};
        let (k, nc) = (sc.k, n.div_ceil(8));
        assert!(n <= B && k <= MAX_K && table.shifted_logits().len() == k);
        assert!(sc.rows.len() >= (k + 2) * B * 8 && sc.z.len() >= B * 8);
        let keys = RoundKeys::new(key);
        let mut h = [std::mem::MaybeUninit::<__m512>::uninit(); MAX_K];
        let half = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        let reps = _mm512_add_epi32(
            _mm512_set1_epi32(rep0 as i32),
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7),
        );
        let rows = sc.rows.as_mut_ptr();
        let z = sc.z.as_mut_ptr();
        for d in (0..n).step_by(2) {
            // In bounds: rows j < K + 2, draws d (and d + 1 where it is below n) < n <= B.
            let second = d + 1 < n;
            let draw =
                _mm512_add_epi32(_mm512_set1_epi32(first.wrapping_add(d as u32) as i32), half);
            let (inv, zl) = step(table, &keys, draw, reps, point, &mut h);
            let (mut q0, mut q1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            let mut yz = _mm512_setzero_ps();
            for (c, hc) in h[..k].iter().enumerate() {
                // Written by `step` for every c < K.
                let yc = _mm512_mul_ps(hc.assume_init(), inv);
                let hit = _mm512_cmpeq_epi32_mask(zl, _mm512_set1_epi32(c as i32));
                yz = _mm512_mask_blend_ps(hit, yz, yc);
                let y0 = _mm512_cvtps_pd(_mm512_castps512_ps256(yc));
                q0 = _mm512_fmadd_pd(y0, y0, q0);
                _mm512_storeu_pd(rows.add(at(k, nc, c, d)), y0);
                if second {
                    let y1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                        _mm512_castps_pd(yc),
                    )));
                    q1 = _mm512_fmadd_pd(y1, y1, q1);
                    _mm512_storeu_pd(rows.add(at(k, nc, c, d + 1)), y1);
                }
            }
            let z0 = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(zl));
            let yz0 = _mm512_cvtps_pd(_mm512_castps512_ps256(yz));
            _mm512_storeu_pd(rows.add(at(k, nc, k, d)), q0);
            _mm512_storeu_pd(rows.add(at(k, nc, k + 1, d)), yz0);
            _mm512_storeu_si512(z.add(d * 8).cast(), z0);
            if second {
                let z1 = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64::<1>(zl));
                let yz1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                    _mm512_castps_pd(yz),
                )));
                _mm512_storeu_pd(rows.add(at(k, nc, k, d + 1)), q1);
                _mm512_storeu_pd(rows.add(at(k, nc, k + 1, d + 1)), yz1);
                _mm512_storeu_si512(z.add((d + 1) * 8).cast(), z1);
            }
        }
    }

    /// Adds the batch of n draws in `sc.rows` and `sc.z` to `sc.sums`: per lane, the arithmetic of
    /// [`crate::estimators::RelaxedMoments::add_batch_lanes`] (products of two f32 numbers
    /// are exact in f64, so a fused multiply-add of two f32 factors rounds as its separate
    /// multiply and add; the partner `||y||^2` keeps them separate).
    ///
    /// # Safety
    /// The CPU must have AVX-512F and FMA; n <= B.
    #[inline(always)]
    pub(super) unsafe fn add_batch(sc: &mut RelaxedReps, n: usize) {
        let k = sc.k;
        assert!(n <= B && sc.rows.len() >= (k + 2) * B * 8 && sc.z.len() >= B * 8);
        assert!(sc.sums.len() >= (k * k + 4 * k) * 8 && sc.lane_tot.len() >= k * (k + 2) * 8);
        let rows = sc.rows.as_ptr();
        let sums = sc.sums.as_mut_ptr();
        let lane_tot = sc.lane_tot.as_mut_ptr();
        add_pair_sums::<__m512d, 8, false>((rows, sums, lane_tot), k, n);
        let nc = n.div_ceil(8);
        let at = |j: usize, d: usize| at(k, nc, j, d);
        let shit = 3 * k + k * k;
        // sum_hit: per category, the y_z of the draws that landed there, in draw order.
        let z = sc.z.as_ptr();
        // Eight categories at once (independent chains), each in draw order.
        for c0 in (0..k).step_by(8) {
            let m = (k - c0).min(8);
            let mut h = [_mm512_setzero_pd(); 8];
            for (j, h) in h.iter_mut().enumerate().take(m) {
                *h = _mm512_loadu_pd(sums.add((shit + c0 + j) * 8));
            }
            for d in 0..n {
                let zd = _mm512_loadu_si512(z.add(d * 8).cast());
                let yz = _mm512_loadu_pd(rows.add(at(k + 1, d)));
                for (j, h) in h.iter_mut().enumerate().take(m) {
                    let hit = _mm512_cmpeq_epi64_mask(zd, _mm512_set1_epi64((c0 + j) as i64));
                    *h = _mm512_mask_add_pd(*h, hit, *h, yz);
                }
            }
            for (j, h) in h.iter().enumerate().take(m) {
                _mm512_storeu_pd(sums.add((shit + c0 + j) * 8), *h);
            }
        }
    }

    /// One cell's estimates of the eight repetitions into `sc.out` (category-major, `c * 8
    /// + r`): the shared [`estimate`](super::shared::estimate) on one register.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline(always)]
    pub(super) unsafe fn estimate(sc: &mut RelaxedReps, cell: &Cell<'_>) {
        let k = sc.k;
        assert!(cell.beta.len() == k && sc.out.len() >= k * 8);
        assert!(sc.sums.len() >= (k * k + 4 * k) * 8);
        assert!(sc.ydb.len() >= (cell.loss + 1) * k * 8 && sc.ydb_done.len() > cell.loss);
        let s = sc.sums.as_ptr();
        let ydbs = sc.ydb.as_mut_ptr().add(cell.loss * k * 8);
        let out = sc.out.as_mut_ptr();
        let done = sc.ydb_done[cell.loss];
        super::shared::estimate::<__m512d>((s, ydbs, out), cell, k, done);
        sc.ydb_done[cell.loss] = true;
    }

    /// `sc.out` (category-major) into `acc[r * width + at ..][..K]` for every repetition r,
    /// eight categories at a time through a transpose.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline(always)]
    pub(super) unsafe fn store(sc: &RelaxedReps, acc: &mut [f64], at: usize, width: usize) {
        let k = sc.k;
        assert!(at + k <= width && acc.len() >= RELAXED_REPS * width && sc.out.len() >= 8 * k);
        let out = sc.out.as_ptr();
        for c0 in (0..k).step_by(8) {
            let mut r = [_mm512_setzero_pd(); 8];
            for (j, v) in r.iter_mut().enumerate() {
                *v = _mm512_loadu_pd(out.add((c0 + j).min(k - 1) * 8));
            }
            let t = transpose(r);
            let m = (k - c0).min(8);
            let mask: __mmask8 = if m == 8 { 0xff } else { (1u8 << m) - 1 };
            for (rep, v) in t.iter().enumerate() {
                // In bounds: rep * width + at + c0 + m <= 8 width (asserted above).
                _mm512_mask_storeu_pd(acc.as_mut_ptr().add(rep * width + at + c0), mask, *v);
            }
        }
    }
}

/// The AVX2 twin of [`avx512`]: the same layout (eight repetitions per slot), each slot in
/// two registers of four repetitions, every pass over the batch run once per half
/// (repetitions 0..4, then 4..8). Per lane the arithmetic of [`avx512`], so of the
/// one-repetition path.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::shared::add_pair_sums;
    use super::{at, Cell, RelaxedReps, RelaxedTable, B, RELAXED_REPS};
    use std::arch::x86_64::*;

    /// Where each half of a slot starts: repetitions 0..4 and 4..8.
    const HALVES: [usize; 2] = [0, 4];

    /// The rows and categories of draws `first .. first + n` of repetitions `rep0 .. rep0 +
    /// 8` straight from the draws, one draw of the eight repetitions a step
    /// ([`crate::draws::relaxed_avx2::step`], lane r: repetition `rep0 + r`), so already
    /// repetition-minor: each lane's numbers are those of [`RelaxedTable::draw_batch`], and
    /// `||y||^2` is summed over c in order from +0.0 (fused, which rounds as the separate
    /// square and add: the square of an f32 number is exact in f64).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; n <= B; K at most
    /// [`crate::draws::relaxed_avx2::MAX_K`].
    #[inline(always)]
    pub(super) unsafe fn draw_rows(
        table: &RelaxedTable,
        key: [u32; 2],
        (rep0, point, first): (u32, u32, u32),
        sc: &mut RelaxedReps,
        n: usize,
    ) {
        use crate::draws::relaxed_avx2::{step, RoundKeys, MAX_K};
        let (k, nc) = (sc.k, n.div_ceil(8));
        assert!(n <= B && k <= MAX_K && table.shifted_logits().len() == k);
        assert!(sc.rows.len() >= (k + 2) * B * 8 && sc.z.len() >= B * 8);
        let keys = RoundKeys::new(key);
        let mut h = [std::mem::MaybeUninit::<__m256>::uninit(); MAX_K];
        let reps = _mm256_add_epi32(
            _mm256_set1_epi32(rep0 as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let rows = sc.rows.as_mut_ptr();
        let z = sc.z.as_mut_ptr();
        for d in 0..n {
            // In bounds: rows j < K + 2, draw d < n <= B.
            let draw = _mm256_set1_epi32(first.wrapping_add(d as u32) as i32);
            let (inv, zl) = step(table, &keys, draw, reps, point, &mut h);
            let (mut q0, mut q1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
            let mut yz = _mm256_setzero_ps();
            for (c, hc) in h[..k].iter().enumerate() {
                // Written by `step` for every c < K.
                let yc = _mm256_mul_ps(hc.assume_init(), inv);
                let hit = _mm256_castsi256_ps(_mm256_cmpeq_epi32(zl, _mm256_set1_epi32(c as i32)));
                yz = _mm256_blendv_ps(yz, yc, hit);
                let y0 = _mm256_cvtps_pd(_mm256_castps256_ps128(yc));
                let y1 = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(yc));
                q0 = _mm256_fmadd_pd(y0, y0, q0);
                q1 = _mm256_fmadd_pd(y1, y1, q1);
                let p = rows.add(at(k, nc, c, d));
                _mm256_storeu_pd(p, y0);
                _mm256_storeu_pd(p.add(4), y1);
            }
            let p = rows.add(at(k, nc, k, d));
            _mm256_storeu_pd(p, q0);
            _mm256_storeu_pd(p.add(4), q1);
            let p = rows.add(at(k, nc, k + 1, d));
            _mm256_storeu_pd(p, _mm256_cvtps_pd(_mm256_castps256_ps128(yz)));
            _mm256_storeu_pd(p.add(4), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(yz)));
            let zp = z.add(d * 8).cast::<__m256i>();
            _mm256_storeu_si256(zp, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(zl)));
            _mm256_storeu_si256(
                zp.add(1),
                _mm256_cvtepu32_epi64(_mm256_extracti128_si256::<1>(zl)),
            );
        }
    }

    /// Adds the batch of n draws in `sc.rows` and `sc.z` to `sc.sums`, one half of the
    /// repetitions at a time ([`add_half`]).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; n <= B.
    #[inline(always)]
    pub(super) unsafe fn add_batch(sc: &mut RelaxedReps, n: usize) {
        let k = sc.k;
        assert!(n <= B && sc.rows.len() >= (k + 2) * B * 8 && sc.z.len() >= B * 8);
        assert!(sc.sums.len() >= (k * k + 4 * k) * 8 && sc.lane_tot.len() >= k * (k + 2) * 8);
        for half in HALVES {
            add_half(sc, n, half);
        }
    }

    /// [`super::avx512::add_batch`] on the four repetitions from `half` (every pointer below
    /// starts there, and a slot's four numbers are one register): per lane the arithmetic of
    /// [`crate::estimators::RelaxedMoments::add_batch_lanes`].
    ///
    /// # Safety
    /// As [`add_batch`], whose asserts cover every access; `half` is 0 or 4.
    #[inline(always)]
    unsafe fn add_half(sc: &mut RelaxedReps, n: usize, half: usize) {
        let k = sc.k;
        let rows = sc.rows.as_ptr().add(half);
        let sums = sc.sums.as_mut_ptr().add(half);
        let lane_tot = sc.lane_tot.as_mut_ptr().add(half);
        add_pair_sums::<__m256d, 4, true>((rows, sums, lane_tot), k, n);
        let nc = n.div_ceil(8);
        let at = |j: usize, d: usize| at(k, nc, j, d);
        let shit = 3 * k + k * k;
        // sum_hit: per category, the y_z of the draws that landed there, in draw order,
        // eight categories at once (independent chains); a blend keeps the sum of a lane
        // that missed as it was.
        let z = sc.z.as_ptr().add(half);
        for c0 in (0..k).step_by(8) {
            let m = (k - c0).min(8);
            let mut h = [_mm256_setzero_pd(); 8];
            for (j, h) in h.iter_mut().enumerate().take(m) {
                *h = _mm256_loadu_pd(sums.add((shit + c0 + j) * 8));
            }
            for d in 0..n {
                let zd = _mm256_loadu_si256(z.add(d * 8).cast());
                let yz = _mm256_loadu_pd(rows.add(at(k + 1, d)));
                for (j, h) in h.iter_mut().enumerate().take(m) {
                    let hit = _mm256_castsi256_pd(_mm256_cmpeq_epi64(
                        zd,
                        _mm256_set1_epi64x((c0 + j) as i64),
                    ));
                    *h = _mm256_blendv_pd(*h, _mm256_add_pd(*h, yz), hit);
                }
            }
            for (j, h) in h.iter().enumerate().take(m) {
                _mm256_storeu_pd(sums.add((shit + c0 + j) * 8), *h);
            }
        }
    }

    /// One cell's estimates of the eight repetitions into `sc.out` (category-major, `c * 8
    /// + r`): the shared [`estimate`](super::shared::estimate) on each half.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub(super) unsafe fn estimate(sc: &mut RelaxedReps, cell: &Cell<'_>) {
        let k = sc.k;
        assert!(cell.beta.len() == k && sc.out.len() >= k * 8);
        assert!(sc.sums.len() >= (k * k + 4 * k) * 8);
        assert!(sc.ydb.len() >= (cell.loss + 1) * k * 8 && sc.ydb_done.len() > cell.loss);
        let done = sc.ydb_done[cell.loss];
        for half in HALVES {
            let s = sc.sums.as_ptr().add(half);
            let ydbs = sc.ydb.as_mut_ptr().add(cell.loss * k * 8 + half);
            let out = sc.out.as_mut_ptr().add(half);
            super::shared::estimate::<__m256d>((s, ydbs, out), cell, k, done);
        }
        sc.ydb_done[cell.loss] = true;
    }

    /// `sc.out` (category-major, `c * 8 + r`) into `acc[r * width + at ..][..K]` for every
    /// repetition r, four categories of four repetitions at a time through a 4 x 4 transpose
    /// (the last group's first `K % 4` lanes where K is not a multiple of 4).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub(super) unsafe fn store(sc: &RelaxedReps, acc: &mut [f64], at: usize, width: usize) {
        let k = sc.k;
        assert!(at + k <= width && acc.len() >= RELAXED_REPS * width && sc.out.len() >= 8 * k);
        for half in HALVES {
            let out = sc.out.as_ptr().add(half);
            for c0 in (0..k).step_by(4) {
                // Categories past K repeat the last (their lanes are not stored).
                let mut r = [_mm256_setzero_pd(); 4];
                for (j, v) in r.iter_mut().enumerate() {
                    *v = _mm256_loadu_pd(out.add((c0 + j).min(k - 1) * 8));
                }
                let t0 = _mm256_unpacklo_pd(r[0], r[1]);
                let t1 = _mm256_unpackhi_pd(r[0], r[1]);
                let t2 = _mm256_unpacklo_pd(r[2], r[3]);
                let t3 = _mm256_unpackhi_pd(r[2], r[3]);
                let t = [
                    _mm256_permute2f128_pd::<0x20>(t0, t2),
                    _mm256_permute2f128_pd::<0x20>(t1, t3),
                    _mm256_permute2f128_pd::<0x31>(t0, t2),
                    _mm256_permute2f128_pd::<0x31>(t1, t3),
                ];
                let m = (k - c0).min(4);
                for (rep, &v) in t.iter().enumerate() {
                    // In bounds: (half + rep) * width + at + c0 + m <= 8 width (asserted
                    // above); lanes past m are not stored. Plain 32-, 16- and 8-byte stores:
                    // a masked store (`vmaskmovpd`) took half of this pass on a Zen 3.
                    let p = acc.as_mut_ptr().add((half + rep) * width + at + c0);
                    let low = _mm256_castpd256_pd128(v);
                    match m {
                        4 => _mm256_storeu_pd(p, v),
                        3 => {
                            _mm_storeu_pd(p, low);
                            _mm_store_sd(p.add(2), _mm256_extractf128_pd::<1>(v));
                        }
                        2 => _mm_storeu_pd(p, low),
                        _ => _mm_store_sd(p, low),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimators::apply::{estimate_one, relaxed_moments};
    use crate::estimators::{by_id, DrawSource, RelaxedMoments};
    use crate::loss::Loss;

    /// The paths this CPU runs (whatever `MCGRAD_SIMD` says).
    fn runnable_paths() -> Vec<RepsPath> {
        let mut paths = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use crate::fastmath::{detected_tier, SimdTier};
            if detected_tier() >= SimdTier::Avx512 {
                paths.push(RepsPath::Avx512);
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                paths.push(RepsPath::Avx2);
            }
        }
        paths
    }

    #[test]
    fn eight_repetitions_at_once_give_each_repetitions_bits() {
        let paths = runnable_paths();
        if paths.is_empty() {
            eprintln!("skipped: this CPU has neither AVX2 with FMA nor AVX-512");
            return;
        }
        let ests: Vec<&'static dyn Estimator> = vec![
            by_id("gumbel-softmax").unwrap(),
            by_id("st-gumbel").unwrap(),
        ];
        let mut checked = 0;
        // K = 70: past the draws' MAX_K, the per-repetition batches and their transposes.
        for (k, tau) in [
            (1usize, 1.0),
            (3, 0.5),
            (10, 1.0),
            (10, 0.3),
            // x * (1 / 0.7) is not x / 0.7 for about a quarter of x (for 0.3 it always is).
            (10, 0.7),
            (17, 2.0),
            (70, 1.0),
        ] {
            let a: Vec<f64> = (0..k).map(|c| (c as f64 * 0.7).sin() * 2.0).collect();
            let t: Vec<f64> = (0..k).map(|c| if c == k / 2 { 1.0 } else { 0.0 }).collect();
            let contexts: Vec<Context> = Loss::QUADRATIC
                .iter()
                .map(|&loss| Context::from_logits(&a, &t, loss, tau))
                .collect();
            let cells: Vec<(usize, &'static dyn Estimator)> = (0..contexts.len())
                .flat_map(|li| ests.iter().map(move |&e| (li, e)))
                .collect();
            let table = RelaxedTable::new(&a, tau);
            let width = cells.len() * k;
            let mut sc = RelaxedReps::new(k);
            let mut m = RelaxedMoments::new(k);
            for s in [1u32, 5, 8, 16, 23, 64, 100, 136] {
                for (rep0, &path) in [0u32, 8, 4_000_000_000]
                    .into_iter()
                    .flat_map(|rep0| paths.iter().map(move |p| (rep0, p)))
                {
                    let mut got = vec![f64::NAN; RELAXED_REPS * width];
                    let draws = ([3, 4], rep0, 2, s);
                    relaxed_sums_reps_on(path, &table, &contexts, &cells, draws, &mut sc, &mut got);
                    for r in 0..RELAXED_REPS {
                        let rep = rep0.wrapping_add(r as u32);
                        relaxed_moments(&table, [3, 4], rep, 2, s, &mut m);
                        for (i, &(li, est)) in cells.iter().enumerate() {
                            let mut want = vec![0.0; k];
                            estimate_one(
                                est,
                                &contexts[li],
                                DrawSource::RelaxedSums(&m),
                                0.0,
                                &mut want,
                            );
                            let at = r * width + i * k;
                            for c in 0..k {
                                assert_eq!(
                                    got[at + c].to_bits(),
                                    want[c].to_bits(),
                                    "{path:?}: K {k}, S {s}, rep {rep}, cell {i}, c {c}"
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(
            checked,
            (1 + 3 + 10 + 10 + 10 + 17 + 70) * 6 * 8 * 3 * 8 * paths.len()
        );
    }
}
