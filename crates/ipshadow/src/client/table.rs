//! What the commands print by default: aligned tables, `key  value` lists, and times (UTC and
//! "in 4m 12s"). Every cell is cleaned of control characters, since what the server holds (a
//! VM's segment name, say) is printed to a terminal.

use std::fmt;

/// Columns, aligned to the widest cell; two spaces between them.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    /// Adds a row (missing cells print empty, extra ones are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().take(self.header.len()).map(|c| clean(&c)).collect());
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = |i: usize| {
            let cells = self.rows.iter().filter_map(|r| r.get(i));
            cells.chain(std::iter::once(&self.header[i])).map(|c| c.chars().count()).max().unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w.saturating_sub(cell.chars().count())));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// `key  value` lines, keys aligned.
pub fn pairs(items: &[(&str, String)]) -> String {
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    items.iter().map(|(k, v)| format!("{k:width$}  {}\n", clean(v))).collect()
}

/// `s` with control characters (terminal escapes among them) shown as `?`.
pub fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Unix milliseconds as `2027-01-15 10:04:05Z`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The date `days` after 1970-01-01 (H. Hinnant's `civil_from_days`, for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}

/// A duration, two units at most: `45s`, `4m 12s`, `2h 05m`, `3d 04h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `in 4m 12s`, or `4m 12s ago`, from `now_ms` to `at_ms`.
pub fn relative(at_ms: u64, now_ms: u64) -> String {
    if at_ms >= now_ms {
        format!("in {}", duration(at_ms - now_ms))
    } else {
        format!("{} ago", duration(now_ms - at_ms))
    }
}

/// Unix milliseconds now by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A percentage without needless decimals: `25%`, `12.5%`.
pub fn pct(p: f64) -> String {
    if p.fract() == 0.0 { format!("{p:.0}%") } else { format!("{p:.1}%") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_cells_are_cleaned() {
        let mut t = Table::new(&["ID", "SEGMENT"]);
        t.row(vec!["vm-a".into(), "seg\x1b[31m".into()]);
        t.row(vec!["vm-long-name".into()]);
        assert_eq!(t.to_string(), "ID            SEGMENT\nvm-a          seg?[31m\nvm-long-name\n");
        assert_eq!(pairs(&[("id", "1".into()), ("state", "paused".into())]), "id     1\nstate  paused\n");
    }

    #[test]
    fn times_read_as_dates_and_durations() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_800_000_000_000), "2027-01-15 08:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(duration(252_000), "4m 12s");
        assert_eq!(duration(3_600_000), "1h 00m");
        assert_eq!(relative(1_000, 61_000), "1m 00s ago");
        assert_eq!((pct(25.0), pct(12.5)), ("25%".to_owned(), "12.5%".to_owned()));
    }
}
