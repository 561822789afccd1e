//! Logs and traces of the `memobuild` process: `tracing` to stderr as text
//! or JSON lines (with the fields of the spans around each line: build,
//! step, operation), and spans to an OTLP collector when an endpoint is
//! configured (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`, or
//! `otlp_endpoint` in a server's config).

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the spans around it.
    Json,
}

/// What was set up; [`Telemetry::shutdown`] sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber: `MEMOBUILD_LOG` filters (else
    /// `default_level`), lines in `format`, spans to `otlp` when given.
    /// `service` names the process in traces (e.g. `memobuild-worker`).
    pub fn init(
        default_level: &str,
        format: LogFormat,
        otlp: Option<&str>,
        service: &str,
    ) -> anyhow::Result<Telemetry> {
        let filter = EnvFilter::try_from_env("MEMOBUILD_LOG").unwrap_or_else(|_| default_level.into());
        let lines = match format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(std::io::stderr)
                .boxed(),
        };
        let provider = otlp.filter(|e| !e.is_empty()).map(|e| provider(e, service)).transpose()?;
        let traces = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("memobuild")));
        tracing_subscriber::registry().with(filter).with(lines).with(traces).init();
        Ok(Telemetry { provider })
    }

    /// Flushes and stops the span exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: sending the last spans to the OTLP collector failed: {e}");
            }
        }
    }
}

/// A tracer provider exporting over OTLP/gRPC to `endpoint` in batches.
fn provider(endpoint: &str, service: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP endpoint {endpoint}: {e}"))?;
    let resource = Resource::builder().with_service_name(service.to_string()).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}
