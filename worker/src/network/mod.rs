//! RUN's default network, as `docker build` gives it: each RUN step joins a
//! network namespace of its own with outbound access through NAT, and
//! resolves names through this worker.
//!
//! A worker owns one bridge (`mbrN`, its own `/24` of the configured `/16`)
//! and one nftables table (`inet memobuild_N`) that masquerades the
//! bridge's traffic, drops what it sends to this host (loopback services,
//! the worker's own ports) except DNS to the forwarder, and drops what it
//! sends to the blocked destinations. Bridge ports are isolated: steps
//! running at once cannot reach each other. Namespaces are prepared ahead
//! and reused, so a step starts without waiting for one.

mod dns_forwarder;
mod nat_bridge;
mod network_config;
mod sandbox_pool;

pub use nat_bridge::NatBridge;
pub use network_config::{Ipv4Cidr, NetworkConfig};
pub use sandbox_pool::{NetworkPool, SandboxLease};

use memobuild_proto::{Error, Result};

/// Runs `program` with `args`, `input` on its stdin; an error names the
/// command and what it printed.
async fn run_tool(program: &str, args: &[&str], input: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Error::new(
                tonic::Code::FailedPrecondition,
                format!(
                    "RUN's default network needs {program} (iproute2 and nftables), run as root: {e}; \
                 or build with --network none"
                ),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::new(
        tonic::Code::FailedPrecondition,
        format!(
            "setting up RUN's default network: {program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    ))
}
