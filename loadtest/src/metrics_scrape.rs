//! Reads one value from a Prometheus text endpoint (`/metrics`) over plain
//! HTTP/1.1, enough to check a server's own gauges during a run.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `http://HOST:PORT/PATH` (or a bare `HOST:PORT`, meaning `/metrics`) as
/// the address to dial and the path to ask for.
pub fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => bail!("metrics URL {url:?}: only http:// is supported, not {scheme}://"),
        None => url,
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/metrics"),
    };
    if authority.is_empty() {
        bail!("metrics URL {url:?}: expected http://HOST:PORT/metrics");
    }
    Ok((authority.to_string(), path.to_string()))
}

/// The sum of `name`'s samples (over all label sets) in Prometheus text
/// format; `None` when there is no sample of that name.
pub fn sample_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let value_text = if let Some(labelled) = rest.strip_prefix('{') {
            match labelled.split_once('}') {
                Some((_, value)) => value,
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue;
        };
        if let Some(value) = value_text.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

/// The sum of `name`'s samples at `url`, or `None` if the server does not
/// export it.
pub async fn scrape(url: &str, name: &str) -> anyhow::Result<Option<f64>> {
    let (authority, path) = split_url(url)?;
    let fetch = async {
        let mut stream = TcpStream::connect(&authority).await.with_context(|| format!("connecting to {authority}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .with_context(|| format!("GET {url}: no answer within 10 s"))?
        .with_context(|| format!("GET {url}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("GET {url}: not an HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("GET {url}: {status}");
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        bail!("GET {url}: chunked responses are not supported");
    }
    Ok(sample_sum(body, name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(split_url("http://127.0.0.1:9090/metrics").unwrap(), ("127.0.0.1:9090".into(), "/metrics".into()));
        assert_eq!(split_url("127.0.0.1:9090").unwrap(), ("127.0.0.1:9090".into(), "/metrics".into()));
        assert!(split_url("https://x:1/metrics").is_err());
        assert!(split_url("http:///metrics").is_err());
    }

    #[test]
    fn samples_of_one_name_are_summed() {
        let text = "# HELP memobuild_scheduler_queued_actions Actions waiting\n\
                    # TYPE memobuild_scheduler_queued_actions gauge\n\
                    memobuild_scheduler_queued_actions 10000\n\
                    memobuild_scheduler_queued_actions_total 3\n\
                    memobuild_x{stage=\"queued\"} 2\n\
                    memobuild_x{stage=\"executing\"} 5\n";
        assert_eq!(sample_sum(text, "memobuild_scheduler_queued_actions"), Some(10000.0));
        assert_eq!(sample_sum(text, "memobuild_x"), Some(7.0));
        assert_eq!(sample_sum(text, "memobuild_absent"), None);
    }
}
