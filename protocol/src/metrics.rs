//! Metrics shared by the tracker and the proxy: tracker-API requests by
//! kind and outcome with their latency, kept so that the hot path (a
//! successful request of a known kind) touches one counter and one
//! histogram resolved at start, without the label families' lock and
//! hashing; and the one latency bucket layout, so the two processes'
//! histograms can be compared and summed.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::tracker_api::Request;

/// A latency histogram: 20 µs to about 10 s, doubling.
pub fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(20e-6, 2.0, 20))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// One kind's handles for its successful answers.
struct KindHandles {
    kind: &'static str,
    ok: Counter,
    latency: Histogram,
}

/// `NAME_total{kind, outcome}` and `NAME_seconds{kind}` (registered as
/// `counter` and `seconds`).
pub struct Requests {
    counts: Family<Labels, Counter>,
    latency: Family<KindLabels, Histogram, fn() -> Histogram>,
    by_kind: Vec<KindHandles>,
}

impl Requests {
    /// Registers the pair under the names and help texts given.
    pub fn register(r: &mut Registry, counter: (&str, &str), seconds: (&str, &str)) -> Requests {
        let counts = Family::<Labels, Counter>::default();
        let latency = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(self::seconds);
        r.register(counter.0, counter.1, counts.clone());
        r.register(seconds.0, seconds.1, latency.clone());
        let by_kind = Request::KINDS
            .iter()
            .map(|&kind| KindHandles {
                kind,
                ok: counts.get_or_create(&Labels { kind, outcome: "ok" }).clone(),
                latency: latency.get_or_create(&KindLabels { kind }).clone(),
            })
            .collect();
        Requests {
            counts,
            latency,
            by_kind,
        }
    }

    /// One answered request: its kind, outcome ("ok" or an error code)
    /// and time.
    pub fn record(&self, kind: &'static str, outcome: &'static str, took: std::time::Duration) {
        let secs = took.as_secs_f64();
        match self.by_kind.iter().find(|h| h.kind == kind) {
            Some(h) => {
                h.latency.observe(secs);
                if outcome == "ok" {
                    h.ok.inc();
                    return;
                }
            }
            None => self.latency.get_or_create(&KindLabels { kind }).observe(secs),
        }
        self.counts.get_or_create(&Labels { kind, outcome }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_and_errors_are_counted_apart() {
        let mut r = Registry::default();
        let m = Requests::register(&mut r, ("requests", "x"), ("request_seconds", "y"));
        let ms = std::time::Duration::from_millis(1);
        m.record("own", "ok", ms);
        m.record("own", "ok", ms);
        m.record("own", "quota", ms);
        m.record("not-a-kind", "ok", ms);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(text.contains("requests_total{kind=\"own\",outcome=\"ok\"} 2"), "{text}");
        assert!(
            text.contains("requests_total{kind=\"own\",outcome=\"quota\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("requests_total{kind=\"not-a-kind\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("request_seconds_count{kind=\"own\"} 3"), "{text}");
    }
}
