//! The result table (metric | pyexec | docker/engine baseline | ratio), printed on stdout
//! as an aligned Markdown table and, with `--markdown`, written to a file together with a
//! header describing the machine.
//!
//! A measurement that could not be made is a value like any other: it shows as
//! `n/a (reason)` in its cell, so one failing variant never hides the others.

use std::fmt::Write as _;

use crate::machine::Machine;
use crate::stats::Summary;

/// A measured value or the reason there is none.
pub type Measured = Result<Value, String>;

/// One cell: what is shown, and the number that ratios are computed from.
#[derive(Debug, Clone)]
pub struct Value {
    pub shown: String,
    pub key: f64,
}

impl Value {
    /// "median / p90" of a summary; the median is the key.
    pub fn spread(s: Summary) -> Value {
        Value {
            shown: format!("{} / {}", num(s.median), num(s.p90)),
            key: s.median,
        }
    }

    pub fn single(x: f64) -> Value {
        Value {
            shown: num(x),
            key: x,
        }
    }

    /// A target from the issue rather than a measurement (memory rows).
    pub fn target(op: &str, x: f64) -> Value {
        Value {
            shown: format!("target {op} {}", num(x)),
            key: x,
        }
    }
}

/// Three significant-ish digits: 0.123, 1.23, 12.3, 123, 1234.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

pub fn na(reason: impl std::fmt::Display) -> String {
    // One line, and short enough to keep the table readable.
    let mut r: String = reason
        .to_string()
        .replace(['\n', '\r'], " ")
        .chars()
        .take(140)
        .collect();
    if r.is_empty() {
        r = "failed".into();
    }
    format!("n/a ({r})")
}

#[derive(Debug, Clone)]
struct Row {
    metric: String,
    pyexec: String,
    baseline: String,
    ratio: String,
}

/// Every row and note of one run.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// Adds a row; the ratio is pyexec / baseline on the key values.
    pub fn row(&mut self, metric: impl Into<String>, pyexec: &Measured, baseline: &Measured) {
        let cell = |m: &Measured| match m {
            Ok(v) => v.shown.clone(),
            Err(e) => na(e),
        };
        let ratio = match (pyexec, baseline) {
            (Ok(p), Ok(b)) if b.key != 0.0 => format!("{:.2}", p.key / b.key),
            _ => "n/a".into(),
        };
        self.rows.push(Row {
            metric: metric.into(),
            pyexec: cell(pyexec),
            baseline: cell(baseline),
            ratio,
        });
    }

    /// A remark printed under the table (how something was measured, what looked odd).
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table as aligned Markdown, then the notes as a list.
    pub fn table(&self) -> String {
        let head = ["metric", "pyexec", "docker/engine baseline", "ratio"];
        let cells: Vec<[String; 4]> = self
            .rows
            .iter()
            .map(|r| [&r.metric, &r.pyexec, &r.baseline, &r.ratio].map(|c| c.replace('|', "\\|")))
            .collect();
        let mut width = head.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: [&str; 4]| {
            let mut s = String::from("|");
            for (c, w) in cols.iter().zip(width) {
                let pad = w - c.chars().count();
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            }
            s.push('\n');
            s
        };
        let mut out = line(head);
        let rule = width.map(|w| "-".repeat(w));
        out.push_str(&line([&rule[0], &rule[1], &rule[2], &rule[3]]));
        for row in &cells {
            out.push_str(&line([&row[0], &row[1], &row[2], &row[3]]));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    /// The Markdown file: a header describing the run and the machine, then the table.
    pub fn markdown(&self, machine: &Machine, command: &str) -> String {
        let mut out = String::from("# pyexec benchmark\n\n");
        let _ = writeln!(out, "- date: {}", machine.date);
        let _ = writeln!(
            out,
            "- machine: {} CPUs (nproc) {}, {} memory, kernel {}",
            machine.nproc, machine.cpu, machine.memory, machine.kernel
        );
        let _ = writeln!(out, "- load average at start: {}", machine.load);
        let _ = writeln!(out, "- docker: {}", machine.docker);
        let _ = writeln!(out, "- image: {}", machine.image);
        let _ = writeln!(out, "- pyexec: {}", machine.source);
        let _ = writeln!(out, "- command: `{command}`");
        out.push_str(
            "\nTimes are median / p90. Ratio = pyexec / baseline on the medians: below 1 \
             means pyexec is faster for times, slower for rates.\n\n",
        );
        out.push_str(&self.table());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_missing_values() {
        let mut r = Report::default();
        r.row("a", &Ok(Value::single(50.0)), &Ok(Value::single(100.0)));
        r.row("b", &Err("no | pool".into()), &Ok(Value::single(1.0)));
        let t = r.table();
        assert!(t.contains("| 0.50 "), "{t}");
        assert!(t.contains("n/a (no \\| pool)"), "{t}");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(num(1234.4), "1234");
    }
}
