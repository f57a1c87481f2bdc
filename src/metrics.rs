//! Renders metrics in the Prometheus text exposition format (version 0.0.4): the body of
//! the tracker's and the peer server's `GET /metrics`.
//!
//! Both servers keep their figures themselves (the tracker in its swarms, the peer server
//! in atomics) and render a snapshot per scrape, so all that is needed is the encoder:
//! `# HELP` and `# TYPE` lines, samples, escaped label values and Go-style floats.

use std::fmt::Write;

/// The `Content-Type` of a text exposition, as Prometheus asks for it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family's samples mean to Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (it restarts from zero with the process); named `…_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A sample's value: a whole number, or a fraction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// A count of bytes, peers, requests ….
    Int(u64),
    /// A fraction or a measurement.
    Float(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::Int(n as u64)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Float(x)
    }
}

/// A text exposition being written, one family after another.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// One family of an [`Exposition`]: takes its samples.
#[derive(Debug)]
pub struct Family<'a> {
    text: &'a mut String,
    name: &'static str,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a counter family (its name ends in `_total`).
    pub fn counter(&mut self, name: &'static str, help: &str) -> Family<'_> {
        self.family(name, Kind::Counter, help)
    }

    /// Starts a gauge family.
    pub fn gauge(&mut self, name: &'static str, help: &str) -> Family<'_> {
        self.family(name, Kind::Gauge, help)
    }

    /// Starts a family: writes its `# HELP` and `# TYPE` lines. Each name is written once.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> Family<'_> {
        debug_assert!(is_metric_name(name), "bad metric name {name:?}");
        debug_assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family {
            text: &mut self.text,
            name,
        }
    }

    /// The exposition's text.
    pub fn finish(self) -> String {
        self.text
    }
}

impl Family<'_> {
    /// Adds a sample with these `(name, value)` labels; a family's samples must differ in
    /// their label values.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        self.text.push_str(self.name);
        for (i, (name, value)) in labels.iter().enumerate() {
            debug_assert!(is_label_name(name), "bad label name {name:?}");
            self.text.push(if i == 0 { '{' } else { ',' });
            self.text.push_str(name);
            self.text.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.text.push_str(r"\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str(r"\n"),
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        if !labels.is_empty() {
            self.text.push('}');
        }
        let _ = match value.into() {
            Value::Int(n) => writeln!(self.text, " {n}"),
            Value::Float(x) if x.is_nan() => writeln!(self.text, " NaN"),
            Value::Float(x) if x.is_infinite() && x > 0.0 => writeln!(self.text, " +Inf"),
            Value::Float(x) if x.is_infinite() => writeln!(self.text, " -Inf"),
            Value::Float(x) => writeln!(self.text, " {x}"),
        };
        self
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with the reserved `__`.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use openmetrics_parser::prometheus::parse_prometheus;
    use openmetrics_parser::{MetricNumber, PrometheusValue};

    use super::*;

    #[test]
    fn families_render_help_type_and_samples_byte_for_byte() {
        let mut m = Exposition::new();
        m.gauge("demo_uptime_seconds", "Seconds since start.")
            .sample(&[], 42u64);
        m.counter("demo_served_bytes_total", "Bytes served, by source.")
            .sample(&[("asset", "a1"), ("source", "peer")], 1024u64)
            .sample(&[("asset", "a1"), ("source", "origin")], 0u64);
        m.gauge("demo_empty", "A family with no samples yet.");
        assert_eq!(
            m.finish(),
            "# HELP demo_uptime_seconds Seconds since start.\n\
             # TYPE demo_uptime_seconds gauge\n\
             demo_uptime_seconds 42\n\
             # HELP demo_served_bytes_total Bytes served, by source.\n\
             # TYPE demo_served_bytes_total counter\n\
             demo_served_bytes_total{asset=\"a1\",source=\"peer\"} 1024\n\
             demo_served_bytes_total{asset=\"a1\",source=\"origin\"} 0\n\
             # HELP demo_empty A family with no samples yet.\n\
             # TYPE demo_empty gauge\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut m = Exposition::new();
        m.gauge("demo_peers", "Peers\\swarm\nsecond line.")
            .sample(&[("name", "a \"b\" c\\d\ne,f=g}")], 1u64);
        assert_eq!(
            m.finish(),
            "# HELP demo_peers Peers\\\\swarm\\nsecond line.\n\
             # TYPE demo_peers gauge\n\
             demo_peers{name=\"a \\\"b\\\" c\\\\d\\ne,f=g}\"} 1\n"
        );
    }

    #[test]
    fn floats_are_written_as_prometheus_reads_them() {
        let mut m = Exposition::new();
        let mut family = m.gauge("demo_ratio", "A ratio.");
        for (label, value) in [
            ("half", 0.5),
            ("big", 1e21),
            ("nan", f64::NAN),
            ("up", f64::INFINITY),
            ("down", f64::NEG_INFINITY),
        ] {
            family.sample(&[("case", label)], value);
        }
        let text = m.finish();
        let values: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(
            values,
            ["0.5", "1000000000000000000000", "NaN", "+Inf", "-Inf"]
        );
    }

    #[test]
    fn a_strict_parser_reads_back_every_value_and_awkward_label() {
        let awkward = "weird \"name\" with \\ and\nnewline, comma=equals}";
        let mut m = Exposition::new();
        m.counter("demo_bytes_total", "Bytes.")
            .sample(&[("asset", "x"), ("name", awkward)], 7u64)
            .sample(&[("asset", "y"), ("name", "plain")], u64::MAX);
        m.gauge("demo_ratio", "Ratio.").sample(&[], 0.25);
        let parsed = parse_prometheus(&m.finish()).expect("the exposition parses");
        let bytes = &parsed.families["demo_bytes_total"];
        assert_eq!(bytes.get_label_names(), ["asset", "name"]);
        let sample = bytes
            .get_sample_by_label_values(&["x".to_string(), awkward.to_string()])
            .expect("the awkward label value round-trips");
        let PrometheusValue::Counter(counter) = &sample.value else {
            panic!("not a counter: {:?}", sample.value);
        };
        assert_eq!(counter.value.as_i64(), Some(7));
        let ratio: Vec<_> = parsed.families["demo_ratio"].iter_samples().collect();
        assert!(
            matches!(ratio[..], [s] if s.value == PrometheusValue::Gauge(MetricNumber::Float(0.25)))
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(is_metric_name("swarmcache_tracker_assets"));
        assert!(is_metric_name("a:b_c9"));
        assert!(!is_metric_name("9lives"));
        assert!(!is_metric_name("has-dash"));
        assert!(!is_metric_name(""));
        assert!(is_label_name("asset"));
        assert!(!is_label_name("__reserved"));
        assert!(!is_label_name("a:b"));
    }
}
