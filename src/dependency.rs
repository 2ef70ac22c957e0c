//! The error every backend (SQL store, queue, payload store) returns.
//!
//! It says which dependency failed and whether the failure looks transient (connection refused,
//! timeout: the client may retry, answered `503`) or not (a bug or a broken invariant: `500`).

use std::fmt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which backend an error came from; shown in logs and metrics, never to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Database,
    Redis,
    PayloadStore,
}

impl Dependency {
    /// The name used as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Redis => "redis",
            Self::PayloadStore => "payload_store",
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Database => "database",
            Self::Redis => "redis",
            Self::PayloadStore => "payload store",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DependencyError {
    /// The dependency could not be reached or did not answer in time.
    #[error("{dependency} is unavailable: {source}")]
    Unavailable {
        dependency: Dependency,
        source: BoxError,
    },
    /// The dependency answered with an error that retrying will not fix.
    #[error("{dependency} failed: {source}")]
    Failed {
        dependency: Dependency,
        source: BoxError,
    },
}

impl DependencyError {
    pub fn unavailable(dependency: Dependency, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            dependency,
            source: source.into(),
        }
    }

    pub fn failed(dependency: Dependency, source: impl Into<BoxError>) -> Self {
        Self::Failed {
            dependency,
            source: source.into(),
        }
    }

    pub fn dependency(&self) -> Dependency {
        match self {
            Self::Unavailable { dependency, .. } | Self::Failed { dependency, .. } => *dependency,
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

impl From<sqlx::Error> for DependencyError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error::*;
        let transient = match &error {
            Io(_) | Tls(_) | PoolTimedOut | PoolClosed | WorkerCrashed | Protocol(_) => true,
            Database(db) => db
                .code()
                .is_some_and(|code| is_transient_database_code(&code)),
            _ => false,
        };
        if transient {
            Self::unavailable(Dependency::Database, error)
        } else {
            Self::failed(Dependency::Database, error)
        }
    }
}

/// Database error codes that mean "not now" rather than "never".
///
/// SQLite: busy (5) and locked (6), under write contention beyond busy_timeout. Postgres
/// (SQLSTATE): connection exceptions (class 08), too many connections (53300), and the server
/// ending sessions because it is shutting down (57P01: a query running during `pg_ctl stop` gets
/// this), crashed (57P02) or is still starting up or recovering (57P03).
fn is_transient_database_code(code: &str) -> bool {
    matches!(code, "5" | "6" | "53300" | "57P01" | "57P02" | "57P03") || code.starts_with("08")
}

/// A Redis that is still loading its data after a restart (`LOADING`), or whose primary is down
/// (`MASTERDOWN`), answers again soon: worth a retry.
fn redis_is_restarting(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown)
    )
}

/// A transaction (`MULTI`/`EXEC`) sent to a Cluster node that does not serve the batch's slot
/// right now (its master is down or moving: `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`) is aborted
/// whole (`EXECABORT`), and redis-rs does not retry it: it is as transient as the errors in it.
fn transaction_aborted_by_cluster_routing(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    if error.kind() != ErrorKind::Server(ServerErrorKind::ExecAbort) {
        return false;
    }
    let Some(errors) = error.clone().into_server_errors() else {
        return false;
    };
    !errors.is_empty()
        && errors.iter().all(|(_, error)| {
            matches!(
                error.kind(),
                Some(
                    ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                )
            )
        })
}

impl From<redis::RedisError> for DependencyError {
    fn from(error: redis::RedisError) -> Self {
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || error.is_cluster_error()
            || redis_is_restarting(&error)
            || transaction_aborted_by_cluster_routing(&error)
        {
            Self::unavailable(Dependency::Redis, error)
        } else {
            Self::failed(Dependency::Redis, error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_transient_database_code;

    #[test]
    fn shutdown_and_connection_codes_are_transient_constraint_errors_are_not() {
        for code in [
            "5", "6", "08006", "08001", "53300", "57P01", "57P02", "57P03",
        ] {
            assert!(is_transient_database_code(code), "{code}");
        }
        // Unique violation, syntax error, SQLite constraint: retrying will not help.
        for code in ["23505", "42601", "19", "22P02"] {
            assert!(!is_transient_database_code(code), "{code}");
        }
    }
}
