use async_trait::async_trait;

use super::HealthCheck;

/// Redis answers PING.
pub struct RedisCheck {
    client: redis::Client,
}

impl RedisCheck {
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("Redis URL: {e}"))?;
        Ok(RedisCheck { client })
    }
}

#[async_trait]
impl HealthCheck for RedisCheck {
    fn name(&self) -> String {
        "redis".into()
    }

    async fn check(&self) -> Result<String, String> {
        let mut connection =
            self.client.get_multiplexed_async_connection().await.map_err(|e| format!("connecting to Redis: {e}"))?;
        let pong: String =
            redis::cmd("PING").query_async(&mut connection).await.map_err(|e| format!("Redis PING: {e}"))?;
        Ok(format!("PING: {pong}"))
    }
}
