//! Queue adapters: Redis, and the SQL stores for deployments without Redis.

pub mod redis;
mod sql;

pub use self::redis::{RedisQueue, TwoStepRedisQueue};
