//! Several seeds of one optimisation at once through the library
//! ([`mcgrad::optimise::optimise_many`]): IndeCateR's 200-Bernoulli problem (maximise the mean
//! of `(z_l - 0.499)^2` from logits 0, RMSprop at 0.01, S = 10, 2000 steps, an evaluation
//! every 100 steps), 10 seeds, with the estimators named on the command line (default: the
//! twelve of the README's timing). Prints the wall time of the whole batch and, per estimator,
//! the mean final objective over the seeds.
//!
//! ```text
//! cargo run --release --example optimise_seeds [-- reinforce,rloo,indecater]
//! ```

use mcgrad::estimators;
use mcgrad::loss::Loss;
use mcgrad::optimise::{optimise_many, Direction, OptimiseSpec};
use mcgrad::problem::Problem;
use mcgrad::train::OptimizerKind;

const DEFAULT: &str =
    "exact,reinforce,reinforce-ema,rloo,muprop,gumbel-softmax,st-gumbel,disarm,st,reinmax,rebar,relax";

fn main() -> mcgrad::Result<()> {
    let list = std::env::args().nth(1).unwrap_or_else(|| DEFAULT.into());
    let chosen = list
        .split(',')
        .map(|id| estimators::by_id(id.trim()))
        .collect::<mcgrad::Result<Vec<_>>>()?;
    let mut problem = Problem::free_logits(200, 2, vec![0.0; 400]);
    problem.b = vec![0.499; 200];
    let specs: Vec<OptimiseSpec> = (0..10)
        .map(|seed| {
            let mut s = OptimiseSpec::new(problem.clone(), Loss::Pnorm, chosen.clone());
            s.steps = 2000;
            s.eval_every = 100;
            s.samples = 10;
            s.optimiser = OptimizerKind::RmsProp;
            s.direction = Direction::Maximise;
            s.seed = seed;
            s
        })
        .collect();
    let t0 = std::time::Instant::now();
    let reports = optimise_many(&specs, &|_| {})?;
    println!(
        "{} seeds x {} estimators x 2000 steps on {} threads: {:.1} s",
        specs.len(),
        chosen.len(),
        rayon::current_num_threads(),
        t0.elapsed().as_secs_f64()
    );
    for (i, est) in chosen.iter().enumerate() {
        let finals: Vec<f64> = reports
            .iter()
            .map(|r| r.trajectories[i].last().objective)
            .collect();
        let mean = finals.iter().sum::<f64>() / finals.len() as f64;
        println!("{:<15} mean final E f {mean:.6}", est.id());
    }
    Ok(())
}
