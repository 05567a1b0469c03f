//! The reproductions' figures: panels of curves against a shared x quantity (optimisation
//! steps, or an index), one line per estimator in the registry's style
//! ([`crate::plot::estimator_style`]), an optional shaded band per line (the spread over
//! seeds), optional reference lines (an optimum), and a logarithmic y axis where asked (drawn
//! as `log10 value`; values `<= 0` are left out, and the legend says so). Rendered to PNG and
//! SVG by [`crate::plot::render`].

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::plot::{decade_label, estimator_style, marker_element, msg, Figure, FONT};

/// One line: an estimator (whose id picks the style) or a reference such as the exact
/// gradient's run.
#[derive(Clone, Debug)]
pub struct Series {
    /// The registry id whose colour and marker the line takes.
    pub style: String,
    /// The legend's text.
    pub label: String,
    /// The points `(x, y)`, in order of x.
    pub points: Vec<(f64, f64)>,
    /// The band `(x, low, high)` drawn shaded around the line (the spread over seeds).
    pub band: Vec<(f64, f64, f64)>,
    /// Dashed instead of solid.
    pub dashed: bool,
}

impl Series {
    /// A solid line with no band.
    pub fn line(style: &str, label: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            style: style.to_string(),
            label: label.to_string(),
            points,
            band: Vec::new(),
            dashed: false,
        }
    }
}

/// One panel.
#[derive(Clone, Debug)]
pub struct Panel {
    /// The caption above the panel.
    pub title: String,
    /// The x axis's description.
    pub x_label: String,
    /// The y axis's description.
    pub y_label: String,
    /// Whether y is drawn on a log scale.
    pub log_y: bool,
    /// Fixed y range (in data units) instead of the data's.
    pub y_range: Option<(f64, f64)>,
    /// The lines.
    pub series: Vec<Series>,
    /// Horizontal reference lines `(y, label)`, drawn dotted in grey.
    pub references: Vec<(f64, String)>,
    /// Names of the x positions 0, 1, 2, ... (a categorical x axis); empty: numbers.
    pub x_names: Vec<String>,
}

/// A figure of panels in a grid with one legend below.
#[derive(Clone, Debug)]
pub struct LineFigure {
    /// The file name without extension.
    pub stem: String,
    /// The title over the panels.
    pub title: String,
    /// Panels per row.
    pub columns: usize,
    /// The panels, row by row.
    pub panels: Vec<Panel>,
    /// A line of text under the legend (what the bands are, what was left out).
    pub note: String,
}

/// A legend entry: (style id, label, dashed).
type LegendEntry = (String, String, bool);

const PANEL_W: u32 = 620;
const PANEL_H: u32 = 460;

impl LineFigure {
    fn rows(&self) -> usize {
        self.panels.len().div_ceil(self.columns.max(1))
    }

    /// The legend entries: every distinct (style, label, dashed), in first-seen order.
    fn legend(&self) -> Vec<LegendEntry> {
        let mut out: Vec<LegendEntry> = Vec::new();
        for s in self.panels.iter().flat_map(|p| &p.series) {
            let entry = (s.style.clone(), s.label.clone(), s.dashed);
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
        out
    }

    fn legend_lines(&self, width: i32) -> Vec<Vec<(i32, LegendEntry)>> {
        let mut lines = Vec::new();
        let mut line = Vec::new();
        let mut x = 20;
        for entry in self.legend() {
            let w = 44 + 10 * entry.1.chars().count() as i32 + 28;
            if x + w > width && !line.is_empty() {
                lines.push(std::mem::take(&mut line));
                x = 20;
            }
            line.push((x, entry));
            x += w;
        }
        if !line.is_empty() {
            lines.push(line);
        }
        lines
    }

    fn width(&self) -> u32 {
        40 + PANEL_W * self.columns.max(1) as u32
    }

    fn legend_height(&self) -> u32 {
        let lines = self.legend_lines(self.width() as i32 - 40).len().max(1) as u32;
        30 * lines + 30 + 24 * self.note.lines().count() as u32
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        panel: &Panel,
    ) -> Result<(), String> {
        let tf = |y: f64| -> Option<f64> {
            if panel.log_y {
                (y > 0.0 && y.is_finite()).then(|| y.log10())
            } else {
                y.is_finite().then_some(y)
            }
        };
        let xs = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0));
        let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let (x0, x1) = if !panel.x_names.is_empty() {
            (-0.4, panel.x_names.len() as f64 - 0.6)
        } else if x0.is_finite() && x1 > x0 {
            (x0, x1)
        } else {
            (0.0, 1.0)
        };
        let (y0, y1) = match panel.y_range {
            Some((a, b)) => (tf(a).unwrap_or(0.0), tf(b).unwrap_or(1.0)),
            None => {
                let ys = panel.series.iter().flat_map(|s| {
                    s.points
                        .iter()
                        .map(|p| p.1)
                        .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
                        .chain(panel.references.iter().map(|r| r.0))
                        .filter_map(tf)
                        .collect::<Vec<_>>()
                });
                let (a, b) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                    (a.min(y), b.max(y))
                });
                if !a.is_finite() {
                    (0.0, 1.0)
                } else if panel.log_y {
                    ((a - 0.1).floor(), (b + 0.1).ceil())
                } else {
                    let pad = ((b - a) * 0.05).max(1e-12 + a.abs() * 1e-3);
                    (a - pad, b + pad)
                }
            }
        };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FONT, 21))
            .margin(12)
            .x_label_area_size(52)
            .y_label_area_size(86)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(msg)?;
        let log = panel.log_y;
        let y_step = (y1 - y0) / 7.0;
        let y_format = |v: &f64| {
            if log {
                decade_label(*v)
            } else {
                format_tick_at(*v, y_step)
            }
        };
        let names = &panel.x_names;
        let x_format = |v: &f64| {
            if names.is_empty() {
                format_tick(*v)
            } else if (v - v.round()).abs() < 1e-6 && *v >= 0.0 {
                names.get(v.round() as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels(if names.is_empty() {
                7
            } else {
                4 * names.len() + 1
            })
            .y_labels(if log {
                ((y1 - y0).round() as usize + 1).clamp(2, 9)
            } else {
                7
            })
            .x_label_formatter(&x_format)
            .y_label_formatter(&y_format)
            .x_desc(&panel.x_label)
            .y_desc(&panel.y_label)
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 17))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(msg)?;
        let grey = RGBColor(110, 110, 110);
        for (y, label) in &panel.references {
            if let Some(y) = tf(*y) {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(x0, y), (x1, y)],
                        3,
                        5,
                        grey.stroke_width(2),
                    ))
                    .map_err(msg)?;
                let (px, py) = chart.backend_coord(&(x0, y));
                let base = area.get_base_pixel();
                area.draw_text(
                    label,
                    &TextStyle::from((FONT, 15)).color(&grey),
                    (px - base.0 + 6, py - base.1 - 18),
                )
                .map_err(msg)?;
            }
        }
        for s in &panel.series {
            let (color, _) = estimator_style(&s.style);
            let band: Vec<(f64, f64, f64)> = s
                .band
                .iter()
                .filter_map(|&(x, lo, hi)| Some((x, tf(lo).unwrap_or(y0), tf(hi)?)))
                .collect();
            if band.len() > 1 {
                let mut outline: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2)).collect();
                outline.extend(band.iter().rev().map(|b| (b.0, b.1.max(y0))));
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        outline,
                        color.mix(0.15).filled(),
                    )))
                    .map_err(msg)?;
            }
        }
        for s in &panel.series {
            let (color, marker) = estimator_style(&s.style);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter_map(|&(x, y)| Some((x, tf(y)?)))
                .collect();
            if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(
                        pts.iter().copied(),
                        9,
                        6,
                        color.stroke_width(2),
                    ))
                    .map_err(msg)?;
            } else {
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(msg)?;
            }
            // A few markers along the line, so that lines stay apart in grey print.
            let every = (pts.len() / 6).max(1);
            let base = area.get_base_pixel();
            for (i, p) in pts.iter().enumerate() {
                if i % every != every / 2 {
                    continue;
                }
                let (px, py) = chart.backend_coord(p);
                area.draw(&marker_element(
                    marker,
                    (px - base.0, py - base.1),
                    5,
                    color,
                ))
                .map_err(msg)?;
            }
        }
        Ok(())
    }

    fn draw_legend<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (width, _) = area.dim_in_pixel();
        let text = TextStyle::from((FONT, 18)).color(&BLACK);
        let lines = self.legend_lines(width as i32 - 40);
        for (row, line) in lines.iter().enumerate() {
            let y = 18 + 30 * row as i32;
            for (x, (style, label, dashed)) in line {
                let (color, marker) = estimator_style(style);
                if *dashed {
                    for seg in [(0, 10), (16, 26), (32, 36)] {
                        area.draw(&PathElement::new(
                            vec![(x + seg.0, y), (x + seg.1, y)],
                            color.stroke_width(2),
                        ))
                        .map_err(msg)?;
                    }
                } else {
                    area.draw(&PathElement::new(
                        vec![(*x, y), (x + 36, y)],
                        color.stroke_width(2),
                    ))
                    .map_err(msg)?;
                }
                area.draw(&marker_element(marker, (x + 18, y), 5, color))
                    .map_err(msg)?;
                area.draw_text(label, &text, (x + 44, y - 10))
                    .map_err(msg)?;
            }
        }
        let small = TextStyle::from((FONT, 16)).color(&RGBColor(60, 60, 60));
        let mut y = 30 * lines.len().max(1) as i32 + 4;
        for note in self.note.lines() {
            area.draw_text(note, &small, (20, y)).map_err(msg)?;
            y += 24;
        }
        Ok(())
    }
}

/// A tick label on an axis whose ticks are about `step` apart: enough decimals to tell
/// neighbouring ticks apart (at least those of [`format_tick`]).
fn format_tick_at(v: f64, step: f64) -> String {
    if step > 0.0 && step < 1.0 && v.abs() < 1e5 && v != 0.0 {
        let digits = (-step.log10()).ceil().max(0.0) as usize;
        let plain = format_tick(v);
        let fine = format!("{v:.digits$}");
        if fine.len() > plain.len() && !plain.contains('e') {
            return fine;
        }
        return plain;
    }
    format_tick(v)
}

/// A tick label: integers plainly, small or large numbers in scientific notation, else
/// three significant digits.
fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if (v - v.round()).abs() < 1e-9 && a < 1e6 {
        format!("{}", v.round())
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let digits = (2 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.digits$}")
    }
}

impl Figure for LineFigure {
    fn stem(&self) -> String {
        self.stem.clone()
    }

    fn size(&self) -> (u32, u32) {
        (
            self.width(),
            50 + PANEL_H * self.rows() as u32 + self.legend_height(),
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let area = root
            .margin(8, 0, 0, 0)
            .titled(&self.title, (FONT, 24))
            .map_err(msg)?
            .margin(0, 0, 20, 20);
        let (_, height) = area.dim_in_pixel();
        let (plots, legend) = area.split_vertically(height as i32 - self.legend_height() as i32);
        let cells = plots.split_evenly((self.rows(), self.columns.max(1)));
        for (cell, panel) in cells.iter().zip(&self.panels) {
            self.draw_panel(cell, panel)?;
        }
        self.draw_legend(&legend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_well() {
        assert_eq!(format_tick(0.0), "0");
        assert_eq!(format_tick(2000.0), "2000");
        assert_eq!(format_tick(0.25), "0.250");
        assert_eq!(format_tick(1.5e-5), "1.5e-5");
        // Ticks 0.0003 apart need four decimals to differ.
        assert_eq!(format_tick_at(0.2493, 0.0003), "0.2493");
        assert_eq!(format_tick_at(0.25, 0.05), "0.250");
    }

    #[test]
    fn renders_png_and_svg_with_log_and_linear_panels() {
        let dir = tempfile::tempdir().unwrap();
        let series = |id: &str| Series {
            style: id.into(),
            label: id.into(),
            points: (0..20)
                .map(|i| (f64::from(i), 1.0 / f64::from(i + 1)))
                .collect(),
            band: (0..20)
                .map(|i| (f64::from(i), 0.5 / f64::from(i + 1), 2.0 / f64::from(i + 1)))
                .collect(),
            dashed: id == "exact",
        };
        let fig = LineFigure {
            stem: "test".into(),
            title: "a test".into(),
            columns: 2,
            panels: vec![
                Panel {
                    title: "log".into(),
                    x_label: "step".into(),
                    y_label: "variance".into(),
                    log_y: true,
                    y_range: None,
                    series: vec![series("reinforce"), series("exact")],
                    references: vec![],
                    x_names: vec![],
                },
                Panel {
                    title: "linear".into(),
                    x_label: "step".into(),
                    y_label: "loss".into(),
                    log_y: false,
                    y_range: None,
                    series: vec![series("relax")],
                    references: vec![(0.2, "optimum".into())],
                    x_names: vec![],
                },
            ],
            note: "bands: min to max over seeds".into(),
        };
        let files = crate::plot::render(&fig, dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        for f in files {
            assert!(std::fs::metadata(dir.path().join(f)).unwrap().len() > 1000);
        }
    }
}
