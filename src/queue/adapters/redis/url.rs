//! What `REDIS_URL` selects: one standalone server, or a Redis Cluster reached through seed nodes.
//!
//! Only the scheme is chosen by hand (`redis+cluster://` → one `redis://` URL per seed node);
//! redis-rs parses every URL. Messages never quote the URL, which may hold a password.

use redis::{ConnectionInfo, IntoConnectionInfo};

const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The Redis a `REDIS_URL` names.
#[derive(Debug, Clone)]
pub enum Topology {
    /// `redis://…`: one server, never a Cluster.
    Standalone(ConnectionInfo),
    /// `redis+cluster://host:port[,host:port…]`: seed nodes of a Cluster. One is enough: the
    /// client asks it for the others.
    Cluster(Vec<ConnectionInfo>),
}

impl Topology {
    /// Reads `REDIS_URL`. Credentials and options are written once, with the first seed node
    /// (`redis+cluster://user:pass@host:port,host:port`), and hold for every node.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        // redis-rs is built here without TLS support; without this it would say only "the
        // feature is not enabled".
        if matches!(scheme, "rediss" | "rediss+cluster" | "valkeys") {
            return Err(format!(
                "REDIS_URL: {scheme}:// asks for TLS, which this build of Sluice does not \
                 support; use redis:// (one server) or redis+cluster:// (Redis Cluster)"
            ));
        }
        let Some(seeds) = url.strip_prefix(CLUSTER_SCHEME) else {
            if url.contains(',') {
                return Err(
                    "REDIS_URL holds a comma, but a redis:// URL names one standalone server: \
                     for Redis Cluster write redis+cluster://host:port[,host:port…] (one seed \
                     node is enough; a comma in a password is written %2C)"
                        .into(),
                );
            }
            return node(url, "REDIS_URL").map(Self::Standalone);
        };
        let mut nodes = Vec::new();
        for (position, seed) in seeds.split(',').map(str::trim).enumerate() {
            let which = format!("seed node {} of REDIS_URL", position + 1);
            if seed.is_empty() {
                return Err(format!(
                    "{which} is empty: write redis+cluster://host:port[,host:port…]"
                ));
            }
            if seed.contains("://") {
                return Err(format!(
                    "{which} has a scheme: write redis+cluster://host:port[,host:port…], each \
                     node as host:port"
                ));
            }
            // Options or credentials after a later node would silently not apply.
            if position > 0 && seed.contains(['@', '/', '?', '#']) {
                return Err(format!(
                    "{which} is not a plain host:port: credentials and options go with the \
                     first node only (redis+cluster://user:pass@host:port,host:port)"
                ));
            }
            nodes.push(node(&format!("redis://{seed}"), &which)?);
        }
        let settings = nodes[0].redis_settings().clone();
        let nodes = nodes
            .into_iter()
            .map(|node| node.set_redis_settings(settings.clone()))
            .collect();
        Ok(Self::Cluster(nodes))
    }
}

fn node(url: &str, which: &str) -> Result<ConnectionInfo, String> {
    url.into_connection_info()
        .map_err(|error| format!("{which} is not a valid Redis URL: {error}"))
}

#[cfg(test)]
mod tests {
    use redis::ConnectionAddr;

    use super::Topology;

    fn addresses(topology: &Topology) -> Vec<String> {
        match topology {
            Topology::Standalone(node) => vec![node.addr().to_string()],
            Topology::Cluster(nodes) => nodes.iter().map(|node| node.addr().to_string()).collect(),
        }
    }

    #[test]
    fn redis_cluster_scheme_selects_cluster_even_with_one_seed_node() {
        let one = Topology::from_url("redis+cluster://127.0.0.1:7101").unwrap();
        assert!(matches!(one, Topology::Cluster(_)), "{one:?}");
        assert_eq!(addresses(&one), ["127.0.0.1:7101"]);

        let three = Topology::from_url("redis+cluster://a:7101, b:7102,[::1]:7103").unwrap();
        assert!(matches!(three, Topology::Cluster(_)), "{three:?}");
        assert_eq!(addresses(&three), ["a:7101", "b:7102", "::1:7103"]);
    }

    #[test]
    fn a_plain_url_is_always_standalone() {
        for url in ["redis://127.0.0.1:6379", "redis://h", "redis://:pw@h:1/2"] {
            let topology = Topology::from_url(url).unwrap();
            assert!(matches!(topology, Topology::Standalone(_)), "{url}");
        }
        let Topology::Standalone(node) = Topology::from_url("redis://u:pw@h:1/2").unwrap() else {
            panic!("standalone");
        };
        assert_eq!(node.addr(), &ConnectionAddr::Tcp("h".into(), 1));
        assert_eq!(node.redis_settings().password(), Some("pw"));
        assert_eq!(node.redis_settings().db(), 2);
    }

    #[test]
    fn credentials_of_the_first_seed_node_hold_for_every_node() {
        let Topology::Cluster(nodes) =
            Topology::from_url("redis+cluster://user:secret@a:7101,b:7102").unwrap()
        else {
            panic!("cluster");
        };
        for node in &nodes {
            assert_eq!(node.redis_settings().username(), Some("user"));
            assert_eq!(node.redis_settings().password(), Some("secret"));
        }
    }

    #[test]
    fn a_comma_in_a_plain_url_points_at_the_cluster_scheme() {
        let error = Topology::from_url("redis://a:7101,redis://b:7102").unwrap_err();
        assert!(error.starts_with("REDIS_URL"), "{error}");
        assert!(error.contains("redis+cluster://"), "{error}");
    }

    #[test]
    fn tls_schemes_are_refused_by_name() {
        for (url, scheme) in [
            ("rediss://h:6379", "rediss://"),
            ("rediss+cluster://h:7101", "rediss+cluster://"),
        ] {
            let error = Topology::from_url(url).unwrap_err();
            assert!(error.starts_with("REDIS_URL"), "{error}");
            assert!(error.contains(scheme) && error.contains("TLS"), "{error}");
        }
    }

    #[test]
    fn malformed_seed_nodes_are_named_without_quoting_the_url() {
        for (url, expected) in [
            ("redis+cluster://", "seed node 1 of REDIS_URL is empty"),
            (
                "redis+cluster://a:1,,b:2",
                "seed node 2 of REDIS_URL is empty",
            ),
            ("redis+cluster://a:1,", "seed node 2 of REDIS_URL is empty"),
            (
                "redis+cluster://redis://a:1",
                "seed node 1 of REDIS_URL has a scheme",
            ),
            (
                "redis+cluster://a:1,u:pw@b:2",
                "seed node 2 of REDIS_URL is not a plain",
            ),
            (
                "redis+cluster://a:1,b:2/3",
                "seed node 2 of REDIS_URL is not a plain",
            ),
            (
                "redis+cluster://a:port",
                "seed node 1 of REDIS_URL is not a valid Redis URL",
            ),
            ("redis://", "REDIS_URL is not a valid Redis URL"),
        ] {
            let error = Topology::from_url(url).unwrap_err();
            assert!(error.starts_with(expected), "{url}: {error}");
        }
        let error = Topology::from_url("redis+cluster://:hunter2@a:port").unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
