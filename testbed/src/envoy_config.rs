//! Static Envoy bootstrap configs for tests.
//!
//! [`plain`] is a proxy with no extra filter. [`with_filters`] adds HTTP
//! filter snippets (placed before the router, in order) and extra cluster
//! snippets; each snippet is one YAML mapping written at column 0, e.g.
//!
//! ```text
//! name: envoy.filters.http.wasm
//! typed_config:
//!   "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
//! ```
//!
//! The listener is named `main` (stat prefix `ingress_http`) and routes every
//! request to cluster `upstream` (HTTP/1.1), WebSocket upgrades and CONNECT included (proxied
//! as requests: the upstream answers the CONNECT itself).

use std::fmt::Write as _;
use std::net::SocketAddr;

/// A proxy with no extra filter: listener on 127.0.0.1:`listener_port`,
/// admin on 127.0.0.1:`admin_port` (0 = let Envoy pick; [`crate::Envoy`]
/// discovers the real ports), everything routed to `upstream_addr`.
pub fn plain(listener_port: u16, admin_port: u16, upstream_addr: SocketAddr) -> String {
    with_filters(listener_port, admin_port, upstream_addr, &[], &[])
}

/// Like [`plain`] plus `http_filters` (before the router, in order) and
/// `extra_clusters` (after cluster `upstream`).
pub fn with_filters(
    listener_port: u16,
    admin_port: u16,
    upstream_addr: SocketAddr,
    http_filters: &[String],
    extra_clusters: &[String],
) -> String {
    let mut clusters = list_item(&cluster("upstream", upstream_addr), 2);
    for c in extra_clusters {
        clusters.push_str(&list_item(c, 2));
    }
    bootstrap(
        admin_port,
        &listener("main", listener_port, "ingress_http", "", http_filters),
        &clusters,
    )
}

/// The bootstrap: admin on 127.0.0.1:`admin_port`, then `listeners` and `clusters` (YAML list
/// items at 2 spaces, e.g. from [`listener`] and [`list_item`]).
pub(crate) fn bootstrap(admin_port: u16, listeners: &str, clusters: &str) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
static_resources:
  listeners:
{listeners}  clusters:
{clusters}"#
    )
}

/// A listener (a YAML list item at 2 spaces) on 127.0.0.1:`port` routing everything to cluster
/// `upstream`, with `http_filters` before the router and `access_log` (the HTTP connection
/// manager's `access_log` entry written at 10 spaces, or empty).
pub(crate) fn listener(
    name: &str,
    port: u16,
    stat_prefix: &str,
    access_log: &str,
    http_filters: &[String],
) -> String {
    let mut filters = String::new();
    for f in http_filters {
        filters.push_str(&list_item(f, 10));
    }
    format!(
        r#"  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
          codec_type: AUTO
          upgrade_configs: [{{ upgrade_type: websocket }}, {{ upgrade_type: CONNECT }}]
          http_protocol_options: {{ enable_trailers: true }}
{access_log}          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ connect_matcher: {{}} }}
                route: {{ cluster: upstream, timeout: 30s }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream, timeout: 30s }}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// A static HTTP/1.1 cluster snippet named `name` with one endpoint.
pub fn cluster(name: &str, addr: SocketAddr) -> String {
    // HTTP/1.1 trailers are dropped unless enabled on both sides (here and on the listener).
    static_cluster(name, addr, "1s", "http_protocol_options").replace(
        "http_protocol_options: {}",
        "http_protocol_options: { enable_trailers: true }",
    )
}

/// A static cluster snippet named `name` with one endpoint at `addr`; `protocol_options` is the
/// `explicit_http_config` key (`http_protocol_options`, `http2_protocol_options`).
pub(crate) fn static_cluster(
    name: &str,
    addr: SocketAddr,
    connect_timeout: &str,
    protocol_options: &str,
) -> String {
    format!(
        r#"name: {name}
type: STATIC
connect_timeout: {connect_timeout}
load_assignment:
  cluster_name: {name}
  endpoints:
  - lb_endpoints:
    - endpoint:
        address:
          socket_address: {{ address: {ip}, port_value: {port} }}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      {protocol_options}: {{}}
"#,
        ip = addr.ip(),
        port = addr.port()
    )
}

/// `filter` (an HTTP filter snippet, a column-0 YAML mapping) wrapped so that Envoy skips it for
/// requests that match none of `probes` (request header, RE2 pattern its value must fully
/// match): an `ExtensionWithMatcher` whose matcher answers `SkipFilter`. Envoy then never calls
/// the filter for such a request.
pub fn skip_unless(filter: &str, probes: &[(String, String)]) -> String {
    let predicate = |(header, pattern): &(String, String), pad: &str| {
        format!(
            "{pad}single_predicate:\n\
             {pad}  input:\n\
             {pad}    name: request-header\n\
             {pad}    typed_config:\n\
             {pad}      \"@type\": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput\n\
             {pad}      header_name: {header}\n\
             {pad}  value_match: {{ safe_regex: {{ google_re2: {{}}, regex: {} }} }}\n",
            serde_json::to_string(pattern).unwrap_or_default()
        )
    };
    let any = match probes {
        [one] => predicate(one, &" ".repeat(12)),
        many => {
            let mut out = String::from("            or_matcher:\n              predicate:\n");
            for p in many {
                let item = predicate(p, &" ".repeat(16));
                let first = format!("{}single_predicate", " ".repeat(16));
                let listed = format!("{}- single_predicate", " ".repeat(14));
                out.push_str(&item.replacen(&first, &listed, 1));
            }
            out
        }
    };
    let mut inner = String::new();
    for line in filter.trim_end().lines() {
        let _ = writeln!(inner, "    {line}");
    }
    format!(
        r#"name: transparent-cache-skip-without-session
typed_config:
  "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
  extension_config:
{inner}  xds_matcher:
    matcher_list:
      matchers:
      - predicate:
          not_matcher:
{any}        on_match:
          action:
            name: skip
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter
"#
    )
}

/// Indents a column-0 YAML mapping as a list item at `indent` spaces.
pub(crate) fn list_item(snippet: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for (i, line) in snippet.trim_end().lines().enumerate() {
        let marker = if i == 0 { "- " } else { "  " };
        if line.trim().is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}{marker}{line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_go_before_router_and_clusters_after_upstream() {
        let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let y = with_filters(
            1,
            2,
            up,
            &["name: my.filter\ntyped_config:\n  a: 1".to_string()],
            &[cluster("backend", "127.0.0.1:7".parse().unwrap())],
        );
        let f = y
            .find("          - name: my.filter\n            typed_config:\n              a: 1\n")
            .unwrap();
        let r = y.find("- name: envoy.filters.http.router").unwrap();
        assert!(f < r);
        let u = y.find("  - name: upstream\n").unwrap();
        let b = y.find("  - name: backend\n").unwrap();
        assert!(u < b);
    }
}
