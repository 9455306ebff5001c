//! The simulation's plot: split % and live connections on A and on B over time, as SVG.

use std::path::Path;

use ipshadow_sim::scenario::Report;
use plotters::prelude::*;

/// Draws `report`'s samples into an SVG file at `path`.
pub fn draw(path: &Path, report: &Report) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t_max = report.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let live_max = report.samples.iter().map(|s| s.live_on_a.max(s.live_on_b)).max().unwrap_or(1).max(1) as f64;
    let title = format!("ipshadow simulate: strategy {:?}, mode {:?}", report.strategy, report.mode);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..live_max * 1.1)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .set_secondary_coord(0.0..t_max, 0.0..105.0);
    chart
        .configure_mesh()
        .x_desc("simulated seconds")
        .y_desc("live TCP connections")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_secondary_axes()
        .y_desc("split to B, %")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let series = |f: fn(&ipshadow_sim::scenario::Sample) -> f64| report.samples.iter().map(move |s| (s.t_s, f(s)));
    chart
        .draw_series(LineSeries::new(series(|s| s.live_on_a as f64), BLUE.stroke_width(2)))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("on A")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(series(|s| s.live_on_b as f64), RED.stroke_width(2)))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("on B")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_secondary_series(LineSeries::new(series(|s| s.split_pct), BLACK.stroke_width(1)))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("split %")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
