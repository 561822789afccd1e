use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared};
use memobuild_proto::{Digest, Result};
use parking_lot::Mutex;

type Flight = Shared<BoxFuture<'static, Result<()>>>;

/// Runs one job per digest at a time: callers that ask while a job for the
/// same digest is running wait for it and share its outcome.
#[derive(Default)]
pub struct SingleFlight {
    flights: Arc<Mutex<HashMap<Digest, Flight>>>,
}

impl SingleFlight {
    /// Runs `job` unless one for `digest` is running; returns its outcome.
    pub async fn run<F>(&self, digest: Digest, job: impl FnOnce() -> F) -> Result<()>
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let flight = {
            let mut flights = self.flights.lock();
            match flights.get(&digest) {
                Some(flight) => flight.clone(),
                None => {
                    let all = self.flights.clone();
                    let job = job();
                    let flight = async move {
                        let outcome = job.await;
                        all.lock().remove(&digest);
                        outcome
                    }
                    .boxed()
                    .shared();
                    flights.insert(digest, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }
}
