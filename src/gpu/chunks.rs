//! Splitting a sweep point's S x R draws into chunks that fit one dispatch and bounded
//! buffers: repetitions in chunks of a multiple of 256 (the moments kernels' workgroup, so
//! the moving-average window of 256 repetitions always reaches back into exactly the
//! previous chunk), and, where S alone is too large for one submit, draws in ranges of a
//! multiple of 4 (a Philox block). All arithmetic is in u32 per field and u64 for products,
//! so counters never wrap: a repetition and a block index each keep their own 32-bit field.

/// How much work one chunk may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Most repetitions per chunk (rounded down to a multiple of 256, at least 256).
    pub max_reps: u32,
    /// Most draws per submit (S x repetitions of a chunk, or a draw range of it).
    pub max_draws: u64,
}

impl Default for ChunkLimits {
    /// 65536 repetitions and 2^28 draws per submit: about 13 ms of an H100, so progress is
    /// reported often and memory stays small (a few tens of MB).
    fn default() -> Self {
        Self {
            max_reps: 1 << 16,
            max_draws: 1 << 28,
        }
    }
}

impl ChunkLimits {
    /// The limits a new engine uses: [`ChunkLimits::default`], with `MCGRAD_GPU_CHUNK_REPS`
    /// repetitions per chunk where it is set to a power of two from 256 to 2^22 (more
    /// repetitions per chunk give the moments kernels more workgroups per dispatch; the GPU
    /// bench's `gpu_chunk_reps` group measures 2^16 against 2^18, to choose per adapter).
    /// Each kernel's buffers still cap a chunk to what the adapter can bind.
    pub fn from_env() -> Self {
        let mut limits = Self::default();
        if let Some(reps) = std::env::var("MCGRAD_GPU_CHUNK_REPS")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|&r| r.is_power_of_two() && (REP_ALIGN..=1 << 22).contains(&r))
        {
            limits.max_reps = reps;
        }
        limits
    }
}

/// Repetitions per moments workgroup (keep in sync with `MOMENTS_WG` in shaders/moments.wgsl).
pub const REP_ALIGN: u32 = 256;

/// The chunking of one sweep point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Repetitions per chunk (a multiple of [`REP_ALIGN`]; the last chunk may be shorter).
    pub chunk_reps: u32,
    /// Draws per dispatch range (a multiple of 4 unless it is all S).
    pub draw_span: u32,
}

impl ChunkPlan {
    /// The plan for S = `samples`, where the kernels allow at most `cap_reps` repetitions
    /// per chunk (dispatch and buffer limits).
    pub fn new(samples: u32, limits: ChunkLimits, cap_reps: u32) -> Self {
        let align = |r: u32| (r / REP_ALIGN * REP_ALIGN).max(REP_ALIGN);
        let mut chunk_reps = align(limits.max_reps.min(cap_reps));
        let s = u64::from(samples.max(1));
        let max_draws = limits.max_draws.max(4);
        if s * u64::from(chunk_reps) > max_draws {
            chunk_reps = align(u32::try_from(max_draws / s).unwrap_or(u32::MAX));
        }
        let per_rep = (max_draws / u64::from(chunk_reps)).max(4);
        let draw_span = if per_rep >= s {
            samples
        } else {
            (per_rep / 4 * 4) as u32
        };
        Self {
            chunk_reps,
            draw_span,
        }
    }

    /// The chunks `(first repetition, repetitions)` of `reps` repetitions, in order.
    pub fn rep_chunks(self, reps: u32) -> impl Iterator<Item = (u32, u32)> {
        let step = self.chunk_reps;
        let mut begin = 0u32;
        std::iter::from_fn(move || {
            (begin < reps).then(|| {
                let len = step.min(reps - begin);
                let chunk = (begin, len);
                begin += len;
                chunk
            })
        })
    }

    /// The draw ranges `[begin, end)` of S = `samples` draws, in order.
    pub fn draw_ranges(self, samples: u32) -> impl Iterator<Item = (u32, u32)> {
        let step = self.draw_span.max(1);
        let mut begin = 0u32;
        std::iter::from_fn(move || {
            (begin < samples).then(|| {
                let end = begin + step.min(samples - begin);
                let range = (begin, end);
                begin = end;
                range
            })
        })
    }
}

/// The largest power of two `t <= max_threads` such that each of `t` threads still gets at
/// least `per_thread` of the `work` items (1 if the work is small).
pub fn threads_per_rep(work: u64, per_thread: u64, max_threads: u32) -> u32 {
    let wanted = (work / per_thread.max(1)).clamp(1, u64::from(max_threads));
    1 << (63 - wanted.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_powers_of_two_within_bounds() {
        assert_eq!(threads_per_rep(0, 16, 256), 1);
        assert_eq!(threads_per_rep(100, 16, 256), 4);
        assert_eq!(threads_per_rep(u64::from(u32::MAX), 16, 256), 256);
    }

    #[test]
    fn draw_ranges_start_on_philox_blocks() {
        let plan = ChunkPlan::new(
            1001,
            ChunkLimits {
                max_reps: 256,
                max_draws: 256 * 100,
            },
            1 << 20,
        );
        assert_eq!(plan.chunk_reps, 256);
        let ranges: Vec<_> = plan.draw_ranges(1001).collect();
        assert!(ranges.iter().all(|&(b, _)| b % 4 == 0));
        assert_eq!(ranges.first().unwrap().0, 0);
        assert_eq!(ranges.last().unwrap().1, 1001);
    }
}
