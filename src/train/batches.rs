//! The minibatch order of training: one Philox-drawn shuffle of the training set per epoch,
//! the same for every estimator (a fresh [`BatchStream`] from the same seed).

use crate::philox::{PhiloxStream, STREAM_TRAIN};

use super::data;

/// The minibatch order: epoch `e` is a Fisher-Yates permutation of the training set drawn
/// from Philox sub-stream `(3 << 28) | e` of the training stream, and minibatches are taken
/// from the concatenated permutations. A fresh stream gives every estimator the same order.
#[derive(Clone, Debug)]
pub struct BatchStream {
    seed: u64,
    n: usize,
    epoch: u32,
    perm: Vec<u32>,
    pos: usize,
}

impl BatchStream {
    /// The order of `n` training images under `seed`.
    pub fn new(seed: u64, n: usize) -> Self {
        Self {
            seed,
            n,
            epoch: 0,
            perm: permutation(seed, n, 0),
            pos: 0,
        }
    }

    /// The next minibatch of `batch` image indices.
    pub fn next_batch(&mut self, batch: usize, out: &mut Vec<u32>) {
        out.clear();
        while out.len() < batch {
            if self.pos == self.n {
                self.epoch += 1;
                self.perm = permutation(self.seed, self.n, self.epoch);
                self.pos = 0;
            }
            out.push(self.perm[self.pos]);
            self.pos += 1;
        }
    }
}

fn permutation(seed: u64, n: usize, epoch: u32) -> Vec<u32> {
    let mut rng = PhiloxStream::new(
        seed,
        STREAM_TRAIN,
        (data::SPLIT_ORDER << 28) | (epoch & 0x0fff_ffff),
    );
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.next_below(i as u32 + 1) as usize;
        p.swap(i, j);
    }
    p
}
