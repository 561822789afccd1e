//! Layer indexes ([`LayerIndex`]) made once per layer blob and kept in
//! memory and in a directory of the state dir (one file per blob, named
//! by its hex digest), so a COPY onto a stack reads a few small files
//! instead of mounting it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use memobuild_cas::BlobStore;
use memobuild_oci::{Layer, LayerIndex};
use memobuild_proto::{Digest, Result};
use parking_lot::Mutex;

use super::layer_stack_view::LayerStackView;

/// Indexes kept in memory, most recent first.
const KEPT_IN_MEMORY: usize = 64;

pub struct LayerIndexes {
    dir: PathBuf,
    memory: Mutex<VecDeque<(Digest, Arc<LayerIndex>)>>,
}

impl LayerIndexes {
    /// Keeps the indexes under `dir` (created when first needed).
    pub fn new(dir: PathBuf) -> Self {
        LayerIndexes { dir, memory: Mutex::new(VecDeque::new()) }
    }

    /// The filesystem of `layers` (bottom first).
    pub async fn view(&self, store: &dyn BlobStore, layers: &[Layer]) -> Result<LayerStackView> {
        let mut indexes = Vec::with_capacity(layers.len());
        for layer in layers {
            indexes.push(self.index(store, layer).await?);
        }
        Ok(LayerStackView::new(indexes))
    }

    async fn index(&self, store: &dyn BlobStore, layer: &Layer) -> Result<Arc<LayerIndex>> {
        let key = layer.blob;
        if let Some((_, index)) = self.memory.lock().iter().find(|(d, _)| *d == key) {
            return Ok(index.clone());
        }
        let file = self.dir.join(key.hex());
        let cached = tokio::fs::read(&file).await.ok().and_then(|bytes| LayerIndex::from_bytes(&bytes).ok());
        let index = match cached {
            Some(index) => Arc::new(index),
            None => {
                let started = std::time::Instant::now();
                let index = Arc::new(LayerIndex::read(store, layer).await?);
                tracing::debug!(blob = %key, elapsed = ?started.elapsed(), "indexed layer");
                // A cache: failing to write it costs a later build time only.
                if let Err(e) = self.save(&file, &index).await {
                    tracing::warn!(error = %e, file = %file.display(), "keeping a layer index");
                }
                index
            }
        };
        let mut memory = self.memory.lock();
        memory.push_front((key, index.clone()));
        memory.truncate(KEPT_IN_MEMORY);
        Ok(index)
    }

    async fn save(&self, file: &std::path::Path, index: &LayerIndex) -> Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let temp = self.dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = match tokio::fs::write(&temp, index.to_bytes()?).await {
            Ok(()) => tokio::fs::rename(&temp, file).await,
            Err(e) => Err(e),
        };
        if written.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        Ok(written?)
    }
}
