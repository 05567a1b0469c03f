//! Maps over the weights for D = 784 (28 x 28 inputs): the exact gradient `G = x^T g`
//! (`G_ij = x_i g_j`) as ten images, one per class, beside each estimator's per-parameter
//! variance `Var G_ij = x_i^2 Var g_j` at the largest draw count of the run. The gradient
//! uses a diverging scale centred on 0; the variances share one logarithmic scale, so rows
//! compare directly.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{decade_label, msg, Figure, Raster, FONT};
use crate::problem::Problem;
use crate::record::Record;
use crate::summary::Summary;

/// Side of the square input image (D = 28 x 28).
pub const IMAGE_SIDE: usize = 28;

/// Screen pixels per image pixel.
const ZOOM: u32 = 3;
const TILE: i32 = (IMAGE_SIDE as u32 * ZOOM) as i32;
const GAP: i32 = 8;
const ROW_GAP: i32 = 16;
const LEFT: i32 = 200;
const TOP: i32 = 95;
/// Decades shown on the variance scale below its maximum.
const DECADES: f64 = 6.0;

/// Perceptually uniform sequential colours (viridis), sampled at nine points.
const VIRIDIS: [(f64, f64, f64); 9] = [
    (68.0, 1.0, 84.0),
    (71.0, 44.0, 122.0),
    (59.0, 81.0, 139.0),
    (44.0, 113.0, 142.0),
    (33.0, 144.0, 141.0),
    (39.0, 173.0, 129.0),
    (92.0, 200.0, 99.0),
    (170.0, 220.0, 50.0),
    (253.0, 231.0, 37.0),
];

/// Diverging blue-white-red (ColorBrewer RdBu), from -1 to 1.
const DIVERGING: [(f64, f64, f64); 5] = [
    (33.0, 102.0, 172.0),
    (146.0, 197.0, 222.0),
    (247.0, 247.0, 247.0),
    (244.0, 165.0, 130.0),
    (178.0, 24.0, 43.0),
];

/// Colour of a parameter whose variance is exactly zero.
const ZERO_COLOUR: [u8; 3] = [215, 215, 215];

fn interpolate(stops: &[(f64, f64, f64)], t: f64) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0) * (stops.len() - 1) as f64;
    let i = (t.floor() as usize).min(stops.len() - 2);
    let f = t - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |u: f64, v: f64| (u + (v - u) * f).round() as u8;
    [mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2)]
}

enum RowKind {
    Gradient {
        max_abs: f64,
    },
    Variance {
        total: f64,
    },
    /// The Monte Carlo variance is not a number (a failed run): nothing to draw.
    NotANumber,
}

struct Row {
    label: String,
    kind: RowKind,
    /// Ten 28 x 28 images of values (gradient or variance), one per class.
    values: Vec<Vec<f64>>,
}

/// The gradient and variance maps of one loss.
pub struct MapFigure {
    loss: String,
    samples: u32,
    reps: u32,
    k: usize,
    rows: Vec<Row>,
    /// `log10` range of the shared variance scale.
    log_range: (f64, f64),
}

impl MapFigure {
    /// The maps of `loss`, or `None` if the problem is not 28 x 28 or the loss has no records.
    pub fn new(summary: &Summary, problem: &Problem, loss: &str) -> Option<Self> {
        if problem.d != IMAGE_SIDE * IMAGE_SIDE {
            return None;
        }
        let samples = summary
            .records
            .iter()
            .filter(|r| r.loss == loss)
            .map(|r| r.samples)
            .max()?;
        let at_s: Vec<&Record> = summary
            .records
            .iter()
            .filter(|r| r.loss == loss && r.samples == samples)
            .collect();
        let first = at_s.first()?;
        let k = problem.k;
        let outer = |v: &[f64]| -> Vec<Vec<f64>> {
            (0..k)
                .map(|j| problem.x.iter().map(|xi| xi * v[j]).collect())
                .collect()
        };
        let x_sq: Vec<f64> = problem.x.iter().map(|v| v * v).collect();

        let mut rows = Vec::new();
        // The exact gradient is zero up to rounding for the seed loss: show it as zero.
        let scale = first.exact_grad.iter().map(|g| g.abs()).fold(0.0, f64::max);
        let grad: Vec<f64> = if scale < 1e-12 {
            vec![0.0; k]
        } else {
            first.exact_grad.clone()
        };
        let grad_images = outer(&grad);
        let max_abs = grad_images
            .iter()
            .flatten()
            .map(|v| v.abs())
            .fold(0.0, f64::max);
        rows.push(Row {
            label: "exact G = xᵀg".into(),
            kind: RowKind::Gradient { max_abs },
            values: grad_images,
        });

        let mut hi = f64::NEG_INFINITY;
        let mut variance_rows = Vec::new();
        for r in at_s.iter().filter(|r| r.estimator != "exact") {
            let images: Vec<Vec<f64>> = (0..k)
                .map(|j| x_sq.iter().map(|x2| x2 * r.var[j]).collect())
                .collect();
            let max = images.iter().flatten().copied().fold(0.0, f64::max);
            if max > 0.0 {
                hi = hi.max(max.log10());
            }
            variance_rows.push((r, images, max));
        }
        // Variances below 1e-12 of the largest are rounding, not signal: draw them as zero.
        let floor = if hi.is_finite() {
            10f64.powf(hi - 12.0)
        } else {
            f64::INFINITY
        };
        for (r, mut images, max) in variance_rows {
            if max < floor {
                images.iter_mut().flatten().for_each(|v| *v = 0.0);
            }
            let kind = if r.var.iter().any(|v| !v.is_finite()) {
                RowKind::NotANumber
            } else {
                RowKind::Variance {
                    total: if max < floor { 0.0 } else { r.total_var_w },
                }
            };
            rows.push(Row {
                label: r.estimator.clone(),
                kind,
                values: images,
            });
        }
        let hi = if hi.is_finite() { hi.ceil() } else { 0.0 };
        Some(Self {
            loss: loss.to_string(),
            samples,
            reps: summary.config.reps,
            k,
            rows,
            log_range: (hi - DECADES, hi),
        })
    }

    fn row_top(&self, row: usize) -> i32 {
        TOP + row as i32 * (TILE + ROW_GAP) + if row > 0 { 20 } else { 0 }
    }

    fn tile_left(&self, class: usize) -> i32 {
        LEFT + class as i32 * (TILE + GAP)
    }

    fn colourbar_left(&self) -> i32 {
        self.tile_left(self.k) + 20
    }

    fn has_variance_rows(&self) -> bool {
        self.rows.len() > 1
    }

    fn variance_colour(&self, v: f64) -> [u8; 3] {
        if v <= 0.0 {
            return ZERO_COLOUR;
        }
        let (lo, hi) = self.log_range;
        interpolate(&VIRIDIS, (v.log10() - lo) / (hi - lo))
    }
}

impl Figure for MapFigure {
    fn stem(&self) -> String {
        format!("maps-{}", self.loss)
    }

    fn size(&self) -> (u32, u32) {
        let width = self.colourbar_left() + 150;
        let height = self.row_top(self.rows.len()) + 60;
        (width as u32, height as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let title = TextStyle::from((FONT, 24)).color(&BLACK);
        let text = TextStyle::from((FONT, 17)).color(&BLACK);
        let small = TextStyle::from((FONT, 15)).color(&RGBColor(70, 70, 70));
        root.draw_text(
            &format!(
                "Gradient of W (loss {}) and each estimator's per-parameter variance at S = {} (R = {})",
                self.loss, self.samples, self.reps
            ),
            &title,
            (20, 14),
        )
        .map_err(msg)?;
        root.draw_text(
            "Each map is one class j (a column of W) over the 28 x 28 input pixels i: G_ij = x_i g_j and Var Ĝ_ij = x_i² Var ĝ_j.",
            &small,
            (20, 46),
        )
        .map_err(msg)?;
        for class in 0..self.k {
            root.draw_text(
                &format!("class {class}"),
                &small,
                (self.tile_left(class) + 14, TOP - 22),
            )
            .map_err(msg)?;
        }
        for (i, row) in self.rows.iter().enumerate() {
            let y = self.row_top(i);
            root.draw_text(&row.label, &text, (20, y + 22))
                .map_err(msg)?;
            let note = match row.kind {
                RowKind::Gradient { max_abs } if max_abs > 0.0 => {
                    format!("max |G_ij| = {max_abs:.2e}")
                }
                RowKind::Gradient { .. } => "exactly 0 for this loss".to_string(),
                RowKind::Variance { total } if total > 0.0 => format!("Σ Var = {total:.2e}"),
                RowKind::Variance { .. } => "zero variance".to_string(),
                RowKind::NotANumber => "variance is NaN".to_string(),
            };
            root.draw_text(&note, &small, (20, y + 48)).map_err(msg)?;
            for class in 0..self.k {
                let x = self.tile_left(class);
                root.draw(&Rectangle::new(
                    [(x - 1, y - 1), (x + TILE, y + TILE)],
                    RGBColor(120, 120, 120),
                ))
                .map_err(msg)?;
            }
        }
        if self.has_variance_rows() {
            let y = self.row_top(1) - 26;
            root.draw_text(
                "per-parameter variance Var Ĝ_ij  [(loss/weight)²], shared log scale",
                &text,
                (LEFT, y),
            )
            .map_err(msg)?;
        }

        // Colour-bar labels (the bars themselves are rasters).
        let bar_x = self.colourbar_left();
        let RowKind::Gradient { max_abs } = self.rows[0].kind else {
            return Ok(());
        };
        let y0 = self.row_top(0);
        for (label, dy) in [
            (format!("{max_abs:+.1e}"), 0),
            ("0".to_string(), TILE / 2),
            (format!("{:+.1e}", -max_abs), TILE),
        ] {
            root.draw_text(&label, &small, (bar_x + 28, y0 + dy - 8))
                .map_err(msg)?;
        }
        if self.has_variance_rows() {
            let (top, bottom) = (self.row_top(1), self.row_top(self.rows.len()) - ROW_GAP);
            let (lo, hi) = self.log_range;
            let mut e = hi;
            while e >= lo - 1e-9 {
                let y = bottom - ((e - lo) / (hi - lo) * f64::from(bottom - top)).round() as i32;
                root.draw(&PathElement::new(
                    vec![(bar_x + 20, y), (bar_x + 25, y)],
                    BLACK,
                ))
                .map_err(msg)?;
                root.draw_text(&decade_label(e), &small, (bar_x + 28, y - 8))
                    .map_err(msg)?;
                e -= 1.0;
            }
            let zero_y = bottom + 4;
            root.draw(&Rectangle::new(
                [(bar_x, zero_y), (bar_x + 20, zero_y + 10)],
                RGBColor(215, 215, 215).filled(),
            ))
            .map_err(msg)?;
            root.draw_text("0", &small, (bar_x + 28, zero_y - 3))
                .map_err(msg)?;
        }
        Ok(())
    }

    fn rasters(&self) -> Vec<Raster> {
        let side = IMAGE_SIDE as u32;
        let mut out = Vec::new();
        for (i, row) in self.rows.iter().enumerate() {
            let y = self.row_top(i);
            for (class, image) in row.values.iter().enumerate() {
                let rgb: Vec<u8> = image
                    .iter()
                    .flat_map(|&v| match row.kind {
                        RowKind::Gradient { max_abs } => {
                            let t = if max_abs > 0.0 {
                                0.5 + 0.5 * v / max_abs
                            } else {
                                0.5
                            };
                            interpolate(&DIVERGING, t)
                        }
                        RowKind::Variance { .. } => self.variance_colour(v),
                        RowKind::NotANumber => [255, 255, 255],
                    })
                    .collect();
                out.push(Raster {
                    at: (self.tile_left(class), y),
                    size: (TILE as u32, TILE as u32),
                    dims: (side, side),
                    rgb,
                });
            }
        }
        // Colour bars: the diverging one beside the gradient row, the shared log one beside
        // the variance rows (top = largest).
        let bar_x = self.colourbar_left();
        let steps = 128u32;
        let diverging: Vec<u8> = (0..steps)
            .flat_map(|i| interpolate(&DIVERGING, 1.0 - f64::from(i) / f64::from(steps - 1)))
            .collect();
        out.push(Raster {
            at: (bar_x, self.row_top(0)),
            size: (20, TILE as u32),
            dims: (1, steps),
            rgb: diverging,
        });
        if self.has_variance_rows() {
            let (top, bottom) = (self.row_top(1), self.row_top(self.rows.len()) - ROW_GAP);
            let viridis: Vec<u8> = (0..steps)
                .flat_map(|i| interpolate(&VIRIDIS, 1.0 - f64::from(i) / f64::from(steps - 1)))
                .collect();
            out.push(Raster {
                at: (bar_x, top),
                size: (20, (bottom - top) as u32),
                dims: (1, steps),
                rgb: viridis,
            });
        }
        out
    }
}
