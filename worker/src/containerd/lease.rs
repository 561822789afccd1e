use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{CreateRequest, DeleteRequest};
use memobuild_proto::{Error, Result};

use super::Containerd;

/// The label that makes containerd's garbage collector drop a lease (and
/// what only it holds) after a time.
const EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// A containerd lease that holds temporary objects (content, active and
/// view snapshots) while MemoBuild works with them. It expires on its own, so
/// a crash leaks nothing for longer than its time to live.
#[derive(Debug)]
pub(super) struct Lease {
    id: String,
}

impl Lease {
    /// Creates a lease named after `purpose` that expires after `ttl`.
    pub(super) async fn create(containerd: &Containerd, purpose: &str, ttl: Duration) -> Result<Lease> {
        let id = format!("memobuild-{purpose}-{}", uuid::Uuid::new_v4().simple());
        let labels = HashMap::from([(EXPIRE_LABEL.to_string(), rfc3339(SystemTime::now() + ttl))]);
        LeasesClient::new(containerd.channel())
            .create(containerd.request(CreateRequest { id: id.clone(), labels }, None))
            .await
            .map_err(|status| Error::from(status).context(format!("creating containerd lease {id}")))?;
        Ok(Lease { id })
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// Deletes the lease; with `sync`, containerd collects what only it held
    /// before answering. A lease that is already gone is fine.
    pub(super) async fn delete(&self, containerd: &Containerd, sync: bool) -> Result<()> {
        delete_lease(containerd, &self.id, sync).await
    }
}

pub(super) async fn delete_lease(containerd: &Containerd, id: &str, sync: bool) -> Result<()> {
    let request = DeleteRequest { id: id.to_string(), sync };
    match LeasesClient::new(containerd.channel()).delete(containerd.request(request, None)).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => Err(Error::from(status).context(format!("deleting containerd lease {id}"))),
    }
}

/// `time` as RFC 3339 in UTC, whole seconds (`2024-05-01T12:00:00Z`).
pub(super) fn rfc3339(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    prost_types::Timestamp { seconds: seconds as i64, nanos: 0 }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_seconds() {
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(86_400 + 61)), "1970-01-02T00:01:01Z");
    }
}
