//! Prometheus text-format metrics: requests by route and status, latency histograms by route,
//! and the database pool and write batching. Hand-written because the exposition format is a
//! few lines and a metrics crate would cost more build time than it saves.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), method.to_string(), status))
                .or_default() += 1;
        }
        let secs = elapsed.as_secs_f64();
        if let Ok(mut m) = self.latency.lock() {
            let h = m.entry(route.to_string()).or_default();
            h.count += 1;
            h.sum += secs;
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
        }
    }

    /// Renders everything; `extra` lines (gauges from other layers) are appended as they are.
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP deprovd_http_requests_total HTTP requests by route pattern, method and status.\n");
        out.push_str("# TYPE deprovd_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, method, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "deprovd_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{}\"}} {}",
                    escape(route),
                    escape(method),
                    status,
                    n
                );
            }
        }
        out.push_str(
            "# HELP deprovd_http_request_duration_seconds HTTP request latency by route pattern.\n",
        );
        out.push_str("# TYPE deprovd_http_request_duration_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for (route, h) in m.iter() {
                let r = escape(route);
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(out, "deprovd_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{bound}\"}} {}", h.counts[i]);
                }
                let _ = writeln!(
                    out,
                    "deprovd_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "deprovd_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "deprovd_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                    h.count
                );
            }
        }
        for (name, help, value) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.observe("/scim/v2/Users", "GET", 200, Duration::from_millis(3));
        m.observe("/scim/v2/Users", "GET", 200, Duration::from_millis(30));
        m.observe("/scim/v2/Users", "POST", 409, Duration::from_millis(1));
        let text = m.render(&[("deprovd_db_pool_size", "Pool connections.", 4.0)]);
        assert!(text.contains(
            "deprovd_http_requests_total{route=\"/scim/v2/Users\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains("status=\"409\"} 1"));
        assert!(text.contains(
            "deprovd_http_request_duration_seconds_bucket{route=\"/scim/v2/Users\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "deprovd_http_request_duration_seconds_bucket{route=\"/scim/v2/Users\",le=\"0.025\"} 2"
        ));
        assert!(text.contains(
            "deprovd_http_request_duration_seconds_bucket{route=\"/scim/v2/Users\",le=\"0.05\"} 3"
        ));
        assert!(text.contains("deprovd_db_pool_size 4"));
    }
}
