use mcgrad::engine::{run_sweep, CpuEngine, SweepSpec};
use mcgrad::estimators::{self, Family};
use mcgrad::loss::Loss;
use mcgrad::problem::Problem;
fn main() {
    let fam = if std::env::args().nth(1).as_deref() == Some("sf") {
        Family::ScoreFunction
    } else {
        Family::Relaxed
    };
    let spec = SweepSpec {
        problem: Problem::seeded(0, 784, 10),
        losses: Loss::ALL.to_vec(),
        estimators: estimators::REGISTRY
            .iter()
            .copied()
            .filter(|e| e.family() == fam)
            .collect(),
        samples: vec![256],
        reps: 200,
        seed: 1,
        tau: 1.0,
    };
    let t = std::time::Instant::now();
    run_sweep(&spec, &CpuEngine::new(1).unwrap(), &|_| {}).unwrap();
    eprintln!("{:?}", t.elapsed());
}
