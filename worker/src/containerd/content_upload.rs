use std::collections::HashMap;

use bytes::Bytes;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{WriteAction, WriteContentRequest};
use futures::StreamExt;
use memobuild_cas::{BlobStore, ByteRange};
use memobuild_oci::Layer;
use memobuild_proto::{DigestFunction, Error, Result};
use tokio_stream::wrappers::ReceiverStream;

use super::Containerd;

/// The largest data chunk of one write message.
const CHUNK: usize = 1 << 20;

/// `sha256:<hex>` of the layer's blob; OCI layers are SHA-256 only.
pub(super) fn blob_ref(layer: &Layer) -> Result<String> {
    if layer.blob.function() != DigestFunction::Sha256 {
        return Err(Error::invalid_argument(format!(
            "layer blob {} is not a SHA-256 digest; containerd needs SHA-256 layers",
            layer.blob
        )));
    }
    Ok(format!("sha256:{}", layer.blob.hex()))
}

impl Containerd {
    /// Copies the layer's blob from `store` into containerd's content
    /// store, under `lease`. A blob containerd already holds is added to the
    /// lease and not sent again.
    pub(super) async fn upload_blob(&self, store: &dyn BlobStore, layer: &Layer, lease: &str) -> Result<()> {
        let expected = blob_ref(layer)?;
        let total = layer.blob.size() as i64;
        let mut blob = store
            .get(&layer.blob, ByteRange::ALL)
            .await
            .map_err(|e| e.context(format!("reading layer blob {} from the CAS", layer.blob)))?;
        let reference = format!("memobuild-upload-{}", uuid::Uuid::new_v4().simple());
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let message = |action: WriteAction, offset: i64, data: Vec<u8>| WriteContentRequest {
            action: action as i32,
            r#ref: reference.clone(),
            total,
            expected: expected.clone(),
            offset,
            data,
            labels: HashMap::new(),
        };
        // The first message opens the writer; when containerd already has
        // the blob it answers ALREADY_EXISTS right away.
        tx.send(message(WriteAction::Stat, 0, Vec::new()))
            .await
            .map_err(|_| Error::internal("content write stream closed"))?;
        let request = self.request(ReceiverStream::new(rx), Some(lease));
        let mut client = ContentClient::new(self.channel());
        let responses = client.write(request);
        let feeder = async {
            let mut offset: i64 = 0;
            while let Some(chunk) = blob.next().await {
                let chunk: Bytes =
                    chunk.map_err(|e| e.context(format!("reading layer blob {} from the CAS", layer.blob)))?;
                for piece in chunk.chunks(CHUNK) {
                    if tx.send(message(WriteAction::Write, offset, piece.to_vec())).await.is_err() {
                        // containerd ended the stream; its answer says why.
                        return Ok(());
                    }
                    offset += piece.len() as i64;
                }
            }
            if offset != total {
                return Err(Error::internal(format!(
                    "layer blob {} has {offset} bytes in the CAS, not {total}",
                    layer.blob
                )));
            }
            let _ = tx.send(message(WriteAction::Commit, offset, Vec::new())).await;
            drop(tx);
            Ok(())
        };
        let reader = async {
            let mut stream = responses.await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        };
        let (fed, answered) = tokio::join!(feeder, reader);
        match answered {
            Ok(()) => fed,
            Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(status) => {
                fed?;
                Err(Error::from(status).context(format!("writing layer blob {expected} into containerd")))
            }
        }
    }
}
