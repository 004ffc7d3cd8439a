//! SVG plots of benchmark results (plotters, SVG backend only: no font or
//! image libraries; text is emitted as SVG `<text>` and drawn by the viewer).

// Chart coordinates: small, non-negative values (axis positions, bar
// indices) converted between f64 and usize.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend name.
    pub name: String,
    /// `(x, y)` points, x ascending.
    pub points: Vec<(f64, f64)>,
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// A line chart; with `log2_x` the x axis is log2-scaled (queue depths).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log2_x: bool,
) -> Result<()> {
    let tx = |x: f64| if log2_x { x.max(1e-9).log2() } else { x };
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| tx(p.0)));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let y1 = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        * 1.1;
    if x0 > x1 {
        return Err(anyhow!("plot {title}: no points"));
    }
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), 0.0..y1.max(1.0))
        .map_err(err)?;
    let fmt_x = |x: &f64| {
        if log2_x {
            format!("{:.0}", 2f64.powf(*x))
        } else {
            format!("{x}")
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_labels(if log2_x {
            (x1 - x0).round() as usize + 1
        } else {
            10
        })
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (tx(p.0), p.1)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A grouped bar chart: one group of bars per category, one bar per
/// series in each group.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<()> {
    if categories.is_empty() || series.is_empty() {
        return Err(anyhow!("plot {title}: nothing to draw"));
    }
    let y1 = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = categories.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n, 0.0..y1.max(1.0))
        .map_err(err)?;
    let cats = categories.to_vec();
    let fmt_x = move |x: &f64| {
        let i = x.floor();
        if (x - i - 0.5).abs() < 0.01 && i >= 0.0 {
            cats.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_label)
        .x_labels(categories.len() * 2 + 1)
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    let k = series.len() as f64;
    let w = 0.8 / k;
    for (j, (name, vals)) in series.iter().enumerate() {
        let color = Palette99::pick(j).to_rgba();
        let bars = vals.iter().enumerate().map(move |(i, &v)| {
            let x = i as f64 + 0.1 + j as f64 * w;
            Rectangle::new([(x, 0.0), (x + w * 0.95, v)], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_series() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qd.svg");
        line_chart(
            &p,
            "IOPS vs queue depth",
            "queue depth",
            "IOPS",
            &[
                Series {
                    name: "keel NVMe/TCP".into(),
                    points: vec![(1.0, 20_000.0), (8.0, 90_000.0), (32.0, 190_000.0)],
                },
                Series {
                    name: "tgt".into(),
                    points: vec![(1.0, 9_000.0), (8.0, 30_000.0), (32.0, 40_000.0)],
                },
            ],
            true,
        )
        .unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.starts_with("<svg") || s.contains("<svg"), "{}", &s[..80]);
        assert!(s.contains("keel NVMe/TCP") && s.contains("tgt"));
        // Text nodes are written as `<text ...>\nLABEL\n</text>`.
        for qd in ["1", "2", "4", "8", "16", "32"] {
            assert!(
                s.contains(&format!(">\n{qd}\n</text>")),
                "x axis label {qd}"
            );
        }
        let b = dir.path().join("cpu.svg");
        bar_chart(
            &b,
            "CPU per I/O",
            "µs",
            &["4k read QD1".into(), "4k read QD32".into()],
            &[
                ("keel".into(), vec![34.0, 3.7]),
                ("tgt".into(), vec![49.0, 27.0]),
            ],
        )
        .unwrap();
        let s = std::fs::read_to_string(&b).unwrap();
        assert!(s.contains("4k read QD32") && s.contains("keel") && s.contains("<rect"));
        assert!(bar_chart(&b, "empty", "x", &[], &[]).is_err());
    }
}
