//! The plot: a ratio to Envoy-without-the-filter by body size, one line per host, one panel per
//! path. Drawn with plotters' bitmap backend; text comes from an embedded 8×8 bitmap font
//! (`font8x8`), so no system font or fontconfig is needed.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

/// One line: a name and `(x index, ratio)` points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(usize, f64)>,
}

/// One panel: a title and its lines.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

/// The color of a host's line.
pub fn color(host: crate::hosts::Host) -> RGBColor {
    use crate::hosts::Host;
    match host {
        Host::NoFilter => RGBColor(40, 40, 40),
        Host::WasmHold => RGBColor(31, 119, 180),
        Host::WasmStream => RGBColor(23, 190, 207),
        Host::Native => RGBColor(44, 160, 44),
        Host::Sidecar => RGBColor(214, 39, 40),
    }
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("plot: {err:?}")
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel `scale` pixels wide.
fn text<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: i32,
    y: i32,
    s: &str,
    scale: i32,
    color: &RGBColor,
) -> Result<()> {
    for (i, ch) in s.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY
            .get(ch as usize)
            .copied()
            .unwrap_or([0; 8]);
        let gx = x + i as i32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let px = gx + col * scale;
                    let py = y + row as i32 * scale;
                    area.draw(&Rectangle::new(
                        [(px, py), (px + scale, py + scale)],
                        color.filled(),
                    ))
                    .map_err(e)?;
                }
            }
        }
    }
    Ok(())
}

fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 8 * scale
}

/// Draws `panels` side by side into a PNG at `path`; `x_labels` name the x positions.
pub fn draw(path: &Path, title: &str, x_labels: &[String], panels: &[Panel]) -> Result<()> {
    let (w, h) = (600 * panels.len().max(1) as u32, 520u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let black = RGBColor(0, 0, 0);
    let grey = RGBColor(200, 200, 200);
    text(&root, 20, 12, title, 2, &black)?;
    let areas = root
        .margin(40, 0, 0, 0)
        .split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        let ymax = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(1.0f64, f64::max);
        let ymax = (ymax * 1.15).max(1.2);
        let (ox, oy) = area.get_base_pixel();
        let (aw, ah) = area.dim_in_pixel();
        let (left, right, top, bottom) = (70i32, 20i32, 40i32, 150i32);
        let mut chart = ChartBuilder::on(area)
            .margin_left(left as u32)
            .margin_right(right as u32)
            .margin_top(top as u32)
            .margin_bottom(bottom as u32)
            .build_cartesian_2d(-0.3f64..(x_labels.len() as f64 - 0.7), 0.0f64..ymax)
            .map_err(e)?;
        let px = |x: f64, y: f64| chart.backend_coord(&(x, y));
        text(&root, ox + left, oy + 12, &panel.title, 2, &black)?;
        // Horizontal grid with labels.
        let step = if ymax > 8.0 {
            2.0
        } else if ymax > 4.0 {
            1.0
        } else if ymax > 2.0 {
            0.5
        } else {
            0.25
        };
        let mut y = 0.0;
        while y <= ymax {
            let (_, py) = px(-0.3, y);
            let line_color = if (y - 1.0).abs() < 1e-9 {
                RGBColor(120, 120, 120)
            } else {
                grey
            };
            root.draw(&PathElement::new(
                vec![(ox + left, py), (ox + aw as i32 - right, py)],
                line_color,
            ))
            .map_err(e)?;
            let label = format!("{y:.2}x");
            text(
                &root,
                ox + left - text_width(&label, 1) - 6,
                py - 4,
                &label,
                1,
                &black,
            )?;
            y += step;
        }
        // x labels.
        for (i, l) in x_labels.iter().enumerate() {
            let (xp, yp) = px(i as f64, 0.0);
            text(&root, xp - text_width(l, 1) / 2, yp + 8, l, 1, &black)?;
        }
        // Axes.
        let (x0, y0) = px(-0.3, 0.0);
        let (_, y1) = px(-0.3, ymax);
        root.draw(&PathElement::new(
            vec![(x0, y1), (x0, y0), (ox + aw as i32 - right, y0)],
            black,
        ))
        .map_err(e)?;
        let axis = "body size";
        let (xm, _) = px((x_labels.len() as f64 - 1.0) / 2.0, 0.0);
        text(
            &root,
            xm - text_width(axis, 1) / 2,
            y0 + 24,
            axis,
            1,
            &black,
        )?;
        // Lines.
        for s in &panel.series {
            let pts: Vec<(f64, f64)> = s.points.iter().map(|&(i, r)| (i as f64, r)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), s.color.stroke_width(3)))
                .map_err(e)?;
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, s.color.filled())))
                .map_err(e)?;
        }
        // Legend under the plot.
        let mut ly = y0 + 48;
        for s in &panel.series {
            root.draw(&Rectangle::new(
                [(ox + left, ly), (ox + left + 24, ly + 8)],
                s.color.filled(),
            ))
            .map_err(e)?;
            text(&root, ox + left + 32, ly, &s.name, 1, &black)?;
            ly += 16;
        }
        let _ = ah;
    }
    root.present().map_err(e)?;
    Ok(())
}
