//! Figures of a training run, as PNG and SVG: the exact held-out loss against steps and
//! against wall-clock seconds, the held-out accuracy against steps, and the gradient
//! variance along training (log scale), one line per estimator; and W after training as
//! ten 28 x 28 images per estimator (`weights.png`, blue negative, red positive, each
//! estimator's row scaled by its largest |W_ij|).

use std::path::Path;

use plotters::coord::combinators::IntoLogRange;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::plot::{ensure_font, FONT};

use super::data::{K, SIDE};
use super::TrainReport;

/// Colour of an estimator, fixed by id so every figure agrees.
pub fn colour(id: &str) -> RGBColor {
    match id {
        "exact" => RGBColor(0, 0, 0),
        "reinforce" => RGBColor(214, 39, 40),
        "reinforce-ema" => RGBColor(255, 127, 14),
        "rloo" => RGBColor(148, 103, 189),
        "muprop" => RGBColor(31, 119, 180),
        "muprop-c" => RGBColor(44, 160, 44),
        "gumbel-softmax" => RGBColor(140, 86, 75),
        "st-gumbel" => RGBColor(227, 119, 194),
        _ => RGBColor(127, 127, 127),
    }
}

fn plot_err(name: &str) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Plot {
        name: name.to_string(),
        message,
    }
}

/// One line of a [`LineFigure`]: its legend label, its colour and its points.
pub(crate) type Series = (String, RGBColor, Vec<(f64, f64)>);

/// One line figure: a series per estimator (shared with [`crate::optimise::output`]).
pub(crate) struct LineFigure<'a> {
    pub(crate) title: String,
    pub(crate) x_label: &'a str,
    pub(crate) y_label: &'a str,
    /// Whether x counts steps (labelled as integers).
    pub(crate) x_steps: bool,
    /// Where the legend goes (away from the lines).
    pub(crate) legend: SeriesLabelPosition,
    /// Whether a linear y axis stops at 0 (values that cannot be negative).
    pub(crate) nonnegative: bool,
    /// (legend label, colour, points).
    pub(crate) series: Vec<Series>,
}

impl LineFigure<'_> {
    fn x_range(&self) -> std::ops::Range<f64> {
        let hi = self
            .series
            .iter()
            .flat_map(|(_, _, s)| s.iter().map(|p| p.0))
            .fold(0.0, f64::max);
        0.0..if hi > 0.0 { hi } else { 1.0 }
    }

    fn y_bounds(&self) -> (f64, f64) {
        let ys = self
            .series
            .iter()
            .flat_map(|(_, _, s)| s.iter().map(|p| p.1))
            .filter(|v| v.is_finite());
        ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
    }
}

fn draw_lines<DB, Y>(
    root: &DrawingArea<DB, Shift>,
    fig: &LineFigure<'_>,
    y: Y,
) -> std::result::Result<(), String>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(root)
        .caption(&fig.title, (FONT, 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(fig.x_range(), y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(fig.x_label)
        .x_label_formatter(&|v| {
            if fig.x_steps {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .y_desc(fig.y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| e.to_string())?;
    for (label, c, points) in &fig.series {
        let c = *c;
        let style = ShapeStyle {
            color: c.to_rgba(),
            filled: false,
            stroke_width: 2,
        };
        let finite = points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite() && p.1 > f64::MIN_POSITIVE);
        chart
            .draw_series(LineSeries::new(finite, style))
            .map_err(|e| e.to_string())?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(fig.legend.clone())
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Writes `name.png` and `name.svg` of a figure, linear or log in y.
pub(crate) fn write_figure(
    dir: &Path,
    name: &str,
    fig: &LineFigure<'_>,
    log_y: bool,
) -> Result<()> {
    const SIZE: (u32, u32) = (900, 560);
    let (lo, hi) = fig.y_bounds();
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    if log_y {
        let lo = if lo.is_finite() && lo > 0.0 {
            lo
        } else {
            1e-12
        };
        let hi = if hi.is_finite() && hi > lo {
            hi
        } else {
            lo * 10.0
        };
        let range = || (lo / 1.5..hi * 1.5).log_scale();
        draw_lines(
            &BitMapBackend::new(&png, SIZE).into_drawing_area(),
            fig,
            range(),
        )
        .map_err(plot_err(name))?;
        draw_lines(
            &SVGBackend::new(&svg, SIZE).into_drawing_area(),
            fig,
            range(),
        )
        .map_err(plot_err(name))?;
    } else {
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo, hi)
        } else {
            (0.0, 1.0)
        };
        let pad = 0.05 * (hi - lo);
        let bottom = if fig.nonnegative {
            (lo - pad).max(0.0)
        } else {
            lo - pad
        };
        let range = || bottom..hi + pad;
        draw_lines(
            &BitMapBackend::new(&png, SIZE).into_drawing_area(),
            fig,
            range(),
        )
        .map_err(plot_err(name))?;
        draw_lines(
            &SVGBackend::new(&svg, SIZE).into_drawing_area(),
            fig,
            range(),
        )
        .map_err(plot_err(name))?;
    }
    Ok(())
}

/// Writes every figure of `report` into `dir`.
///
/// # Errors
/// [`Error::Plot`] naming the figure.
pub fn write_plots(dir: &Path, report: &TrainReport) -> Result<()> {
    ensure_font();
    let cfg = &report.plan.config;
    let setting = format!(
        "B = {}, S = {}, {}",
        cfg.batch,
        cfg.samples,
        cfg.optimizer.name()
    );
    let series = |f: &dyn Fn(&super::CurvePoint) -> (f64, f64)| {
        report
            .curves
            .iter()
            .map(|c| {
                (
                    c.estimator.to_string(),
                    colour(c.estimator),
                    c.points.iter().map(f).collect(),
                )
            })
            .collect::<Vec<_>>()
    };
    let loss_label = format!("held-out expected {} loss (exact)", cfg.loss);
    write_figure(
        dir,
        "loss_vs_steps",
        &LineFigure {
            title: format!("Held-out loss against steps ({setting})"),
            x_label: "steps",
            x_steps: true,
            nonnegative: true,
            legend: SeriesLabelPosition::UpperRight,
            y_label: &loss_label,
            series: series(&|p| (f64::from(p.step), p.heldout_loss)),
        },
        false,
    )?;
    write_figure(
        dir,
        "loss_vs_seconds",
        &LineFigure {
            title: format!("Held-out loss against training time ({setting})"),
            x_label: "wall seconds of the training steps (one thread)",
            x_steps: false,
            nonnegative: true,
            legend: SeriesLabelPosition::UpperRight,
            y_label: &loss_label,
            series: series(&|p| (p.train_seconds, p.heldout_loss)),
        },
        false,
    )?;
    write_figure(
        dir,
        "accuracy_vs_steps",
        &LineFigure {
            title: format!("Held-out accuracy against steps ({setting})"),
            x_label: "steps",
            x_steps: true,
            nonnegative: true,
            legend: SeriesLabelPosition::LowerRight,
            y_label: "accuracy of the most probable class",
            series: series(&|p| (f64::from(p.step), p.heldout_accuracy)),
        },
        false,
    )?;
    let var_series: Vec<_> = series(&|p| (f64::from(p.step), p.grad_variance))
        .into_iter()
        .filter(|(_, _, s)| s.iter().any(|p| p.1 > 0.0))
        .collect();
    write_figure(
        dir,
        "grad_variance",
        &LineFigure {
            title: format!("Variance of the minibatch gradient estimate ({setting})"),
            x_label: "steps",
            x_steps: true,
            nonnegative: true,
            legend: SeriesLabelPosition::UpperRight,
            y_label: "E||G_hat - G||^2 on the probe batch (log)",
            series: var_series,
        },
        true,
    )?;
    write_weights(&dir.join("weights.png"), report)
}

/// A diverging colour for `v` in [-1, 1]: blue (negative), white (0), red (positive).
fn diverging(v: f64) -> RGBColor {
    let v = v.clamp(-1.0, 1.0);
    let fade = |t: f64| (255.0 * (1.0 - t.abs())).round() as u8;
    if v >= 0.0 {
        RGBColor(255, fade(v), fade(v))
    } else {
        RGBColor(fade(v), fade(v), 255)
    }
}

/// `weights.png`: one row per estimator, the ten columns of W as 28 x 28 images.
fn write_weights(path: &Path, report: &TrainReport) -> Result<()> {
    const ZOOM: i32 = 3;
    const TILE: i32 = SIDE as i32 * ZOOM;
    const GAP: i32 = 6;
    const LEFT: i32 = 130;
    const TOP: i32 = 30;
    let rows = report.curves.len() as i32;
    let size = (
        (LEFT + K as i32 * (TILE + GAP)) as u32,
        (TOP + rows * (TILE + GAP) + GAP) as u32,
    );
    let draw = || -> std::result::Result<(), String> {
        let root = BitMapBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let text = TextStyle::from((FONT, 16).into_font()).color(&BLACK);
        for class in 0..K as i32 {
            let x = LEFT + class * (TILE + GAP) + TILE / 2 - 4;
            root.draw(&Text::new(format!("{class}"), (x, 8), text.clone()))
                .map_err(|e| e.to_string())?;
        }
        for (r, curve) in report.curves.iter().enumerate() {
            let y0 = TOP + r as i32 * (TILE + GAP);
            root.draw(&Text::new(
                curve.estimator,
                (6, y0 + TILE / 2 - 8),
                text.clone(),
            ))
            .map_err(|e| e.to_string())?;
            let scale = curve.w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let scale = if scale > 0.0 { scale } else { 1.0 };
            for class in 0..K {
                let x0 = LEFT + class as i32 * (TILE + GAP);
                for pix in 0..SIDE * SIDE {
                    let c = diverging(curve.w[pix * K + class] / scale);
                    let (pr, pc) = ((pix / SIDE) as i32, (pix % SIDE) as i32);
                    let corner = (x0 + pc * ZOOM, y0 + pr * ZOOM);
                    root.draw(&Rectangle::new(
                        [corner, (corner.0 + ZOOM, corner.1 + ZOOM)],
                        c.filled(),
                    ))
                    .map_err(|e| e.to_string())?;
                }
            }
        }
        root.present().map_err(|e| e.to_string())
    };
    draw().map_err(plot_err("weights"))
}
