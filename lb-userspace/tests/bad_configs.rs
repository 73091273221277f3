//! The configs validation must refuse, as a table: each case changes one
//! thing in a good config and names exactly the errors that must come back
//! (code, where, which field). It starts with the single-server mistakes the
//! project exists to stop.

use std::collections::BTreeSet;

use lb_userspace::policy::validate::validate;

const GOOD: &str = r#"
interface = "eth1"

[[vip]]
name = "checkout"
address = "198.18.100.1"
port = 443
protocol = "tcp"
backend = [
  { name = "c1", address = "198.18.0.11", weight = 1 },
  { name = "c2", address = "198.18.0.12", weight = 1 },
  { name = "c3", address = "198.18.0.13", weight = 1 },
]

[[vip]]
name = "dns6"
address = "2001:2::53"
port = 53
protocol = "udp"
backend = [
  { name = "d1", address = "2001:2::11" },
  { name = "d2", address = "2001:2::12" },
]
health_check = { port = 8053 }
"#;

const CHECKOUT: &str = "vip \"checkout\"";
const C1: &str = "vip \"checkout\" backend \"c1\"";
const C2: &str = "vip \"checkout\" backend \"c2\"";
const C3: &str = "vip \"checkout\" backend \"c3\"";
const DNS6: &str = "vip \"dns6\"";

struct Case {
    name: &'static str,
    edits: Vec<(&'static str, &'static str)>,
    errors: Vec<(&'static str, &'static str, &'static str)>,
}

fn case(
    name: &'static str,
    edits: &[(&'static str, &'static str)],
    errors: &[(&'static str, &'static str, &'static str)],
) -> Case {
    Case {
        name,
        edits: edits.to_vec(),
        errors: errors.to_vec(),
    }
}

const C1_LINE: &str = r#"{ name = "c1", address = "198.18.0.11", weight = 1 }"#;
const C2_LINE: &str = r#"{ name = "c2", address = "198.18.0.12", weight = 1 }"#;
const C3_LINE: &str = r#"{ name = "c3", address = "198.18.0.13", weight = 1 }"#;
const CHECKOUT_ADDR: &str = r#"address = "198.18.100.1""#;
const EXTRA: &str = "\n";
const C1_ROW: &str = "  { name = \"c1\", address = \"198.18.0.11\", weight = 1 },\n";
const C2_ROW: &str = "  { name = \"c2\", address = \"198.18.0.12\", weight = 1 },\n";
const C3_ROW: &str = "  { name = \"c3\", address = \"198.18.0.13\", weight = 1 },\n";

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // The outage: every way a pool collapses onto one server.
        case("all weight on one backend", &[(C1_LINE, r#"{ name = "c1", address = "198.18.0.11", weight = 100 }"#)],
            &[("concentration", C1, "weight")]),
        case("a heavy backend takes 60%", &[(C1_LINE, r#"{ name = "c1", address = "198.18.0.11", weight = 3 }"#)],
            &[("concentration", C1, "weight")]),
        case("every backend but one at weight 0", &[
                (C2_LINE, r#"{ name = "c2", address = "198.18.0.12", weight = 0 }"#),
                (C3_LINE, r#"{ name = "c3", address = "198.18.0.13", weight = 0 }"#)],
            &[("too-few-backends", CHECKOUT, "backend"), ("concentration", C1, "weight")]),
        case("the same backend under several names", &[(C2_LINE, r#"{ name = "c2", address = "198.18.0.11", weight = 1 }"#)],
            &[("duplicate-backend", C2, "address"), ("guard-unchecked", CHECKOUT, "backend")]),
        case("the same backend, once with its port spelled out", &[(C2_LINE, r#"{ name = "c2", address = "198.18.0.11", port = 443 }"#)],
            &[("duplicate-backend", C2, "address"), ("guard-unchecked", CHECKOUT, "backend")]),
        case("backend list replaced by one entry", &[(C2_ROW, ""), (C3_ROW, "")],
            &[("too-few-backends", CHECKOUT, "backend"), ("concentration", C1, "weight")]),
        case("a typo points every backend at the same IP", &[
                (C2_LINE, r#"{ name = "c2", address = "198.18.0.11", weight = 1 }"#),
                (C3_LINE, r#"{ name = "c3", address = "198.18.0.11", weight = 1 }"#)],
            &[("duplicate-backend", C2, "address"), ("duplicate-backend", C3, "address"), ("guard-unchecked", CHECKOUT, "backend")]),
        case("all weights zero", &[
                (C1_LINE, r#"{ name = "c1", address = "198.18.0.11", weight = 0 }"#),
                (C2_LINE, r#"{ name = "c2", address = "198.18.0.12", weight = 0 }"#),
                (C3_LINE, r#"{ name = "c3", address = "198.18.0.13", weight = 0 }"#)],
            &[("no-capacity", CHECKOUT, "weight"), ("guard-unchecked", CHECKOUT, "backend")]),
        case("a VIP with an empty backend list", &[(C1_ROW, ""), (C2_ROW, ""), (C3_ROW, "")],
            &[("no-backends", CHECKOUT, "backend"), ("guard-unchecked", CHECKOUT, "backend")]),
        case("a VIP with no backend key", &[("protocol = \"udp\"\nbackend = [", "protocol = \"udp\"\nunused = [")],
            &[("unknown-key", DNS6, "unused"), ("no-backends", DNS6, "backend"), ("guard-unchecked", DNS6, "backend")]),
        // Shape: syntax, keys, types.
        case("broken syntax", &[("[[vip]]\nname = \"checkout\"", "[[vip]\nname = \"checkout\"")],
            &[("syntax", "config", "line 4, column 6")]),
        case("unknown top-level key", &[("interface = \"eth1\"", "interface = \"eth1\"\ntabel_size = 4093")],
            &[("unknown-key", "config", "tabel_size")]),
        case("misspelt VIP key", &[("port = 443\nprotocol", "port = 443\nprotcol")],
            &[("unknown-key", CHECKOUT, "protcol"), ("missing-key", CHECKOUT, "protocol")]),
        case("misspelt backend key", &[(C1_LINE, r#"{ name = "c1", address = "198.18.0.11", wieght = 1 }"#)],
            &[("unknown-key", C1, "wieght")]),
        case("VIP without an address", &[(CHECKOUT_ADDR, "")],
            &[("missing-key", CHECKOUT, "address")]),
        case("backend without an address", &[(C1_LINE, r#"{ name = "c1", weight = 1 }"#)],
            &[("missing-key", C1, "address")]),
        case("port out of range", &[("port = 443", "port = 70000")],
            &[("invalid-value", CHECKOUT, "port")]),
        case("port written as text", &[("port = 443", "port = \"https\"")],
            &[("invalid-value", CHECKOUT, "port")]),
        case("unknown protocol", &[("protocol = \"tcp\"", "protocol = \"sctp\"")],
            &[("invalid-value", CHECKOUT, "protocol")]),
        case("a bad VIP key does not hide its backends' problems", &[
                ("protocol = \"tcp\"", "protocol = \"TCP\""),
                (C2_LINE, r#"{ name = "c2", address = "198.18.0.11", weight = 1 }"#),
                (C3_LINE, r#"{ name = "c3", address = "127.0.0.1", weight = 1 }"#)],
            &[("invalid-value", CHECKOUT, "protocol"), ("duplicate-backend", C2, "address"), ("reserved-address", C3, "address")]),
        case("malformed VIP address", &[(CHECKOUT_ADDR, r#"address = "198.18.100""#)],
            &[("invalid-value", CHECKOUT, "address")]),
        case("malformed MAC", &[(C1_LINE, r#"{ name = "c1", address = "198.18.0.11", mac = "02:00:00:00:11" }"#)],
            &[("invalid-value", C1, "mac")]),
        case("negative weight", &[(C1_LINE, r#"{ name = "c1", address = "198.18.0.11", weight = -1 }"#)],
            &[("invalid-value", C1, "weight")]),
        case("[[vips]] instead of [[vip]]", &[("[[vip]]\nname = \"checkout\"", "[[vips]]\nname = \"checkout\"")],
            &[("unknown-key", "config", "vips")]),
        case("unknown forwarding mode", &[("interface = \"eth1\"", "interface = \"eth1\"\nforwarding = \"nat\"")],
            &[("invalid-value", "config", "forwarding")]),
        // Addresses.
        case("unspecified VIP", &[(CHECKOUT_ADDR, r#"address = "0.0.0.0""#)],
            &[("reserved-address", "vip \"checkout\"", "address")]),
        case("multicast VIP", &[(CHECKOUT_ADDR, r#"address = "224.0.0.5""#)],
            &[("reserved-address", CHECKOUT, "address")]),
        case("broadcast VIP", &[(CHECKOUT_ADDR, r#"address = "255.255.255.255""#)],
            &[("reserved-address", CHECKOUT, "address")]),
        case("loopback VIP", &[(CHECKOUT_ADDR, r#"address = "127.0.0.1""#)],
            &[("reserved-address", CHECKOUT, "address")]),
        case("IPv6 multicast VIP", &[(r#"address = "2001:2::53""#, r#"address = "ff02::1""#)],
            &[("reserved-address", DNS6, "address")]),
        case("unspecified backend", &[(C1_LINE, r#"{ name = "c1", address = "0.0.0.0" }"#)],
            &[("reserved-address", C1, "address")]),
        case("multicast backend", &[(C1_LINE, r#"{ name = "c1", address = "239.1.1.1" }"#)],
            &[("reserved-address", C1, "address")]),
        case("backend is the VIP", &[(C1_LINE, r#"{ name = "c1", address = "198.18.100.1" }"#)],
            &[("backend-is-vip", C1, "address")]),
        case("IPv6 backend behind an IPv4 VIP", &[(C1_LINE, r#"{ name = "c1", address = "2001:2::11" }"#)],
            &[("family-mismatch", C1, "address")]),
        case("IPv4 backend behind an IPv6 VIP", &[(r#"{ name = "d1", address = "2001:2::11" }"#, r#"{ name = "d1", address = "198.18.0.21" }"#)],
            &[("family-mismatch", "vip \"dns6\" backend \"d1\"", "address")]),
        // Encapsulation.
        case("unknown forwarding mode", &[("interface = \"eth1\"", "interface = \"eth1\"\nforwarding = \"gre\"")],
            &[("invalid-value", "config", "forwarding")]),
        case("encapsulation without an outer source", &[("interface = \"eth1\"", "interface = \"eth1\"\nforwarding = \"ipip\"")],
            &[("no-outer-source", "encapsulation", "source4"), ("no-outer-source", "encapsulation", "source6")]),
        case("an IPv6 VIP encapsulating to IPv4 backends needs source4", &[
                ("interface = \"eth1\"", "interface = \"eth1\"\n[encapsulation]\nsource6 = \"2001:2:0:64::/64\""),
                ("name = \"dns6\"", "name = \"dns6\"\nforwarding = \"gue\""),
                (r#"{ name = "d1", address = "2001:2::11" }"#, r#"{ name = "d1", address = "198.18.0.21" }"#)],
            &[("no-outer-source", "encapsulation", "source4")]),
        case("an outer source prefix of the wrong family", &[("interface = \"eth1\"", "interface = \"eth1\"\n[encapsulation]\nsource4 = \"2001:2:0:64::/64\"")],
            &[("source-family", "encapsulation", "source4")]),
        case("an outer source prefix with host bits", &[("interface = \"eth1\"", "interface = \"eth1\"\n[encapsulation]\nsource4 = \"198.18.64.1/24\"")],
            &[("invalid-value", "encapsulation", "source4")]),
        case("an MTU that leaves IPv6 clients less than 1280 bytes", &[
                ("interface = \"eth1\"", "interface = \"eth1\"\n[encapsulation]\nsource6 = \"2001:2:0:64::/64\"\nmtu = 1300"),
                ("name = \"dns6\"", "name = \"dns6\"\nforwarding = \"ipip\"")],
            &[("mtu-headroom", DNS6, "forwarding")]),
        case("an MTU below IPv4's minimum", &[("interface = \"eth1\"", "interface = \"eth1\"\n[encapsulation]\nmtu = 500")],
            &[("invalid-value", "encapsulation", "mtu")]),
        // Ports and duplicates.
        case("backend port differs from the VIP's", &[(C1_LINE, r#"{ name = "c1", address = "198.18.0.11", port = 8443 }"#)],
            &[("port-mismatch", C1, "port")]),
        case("backend port on an any-port VIP", &[("port = 443", "port = 0"), (C1_LINE, r#"{ name = "c1", address = "198.18.0.11", port = 443 }"#)],
            &[("port-mismatch", "vip \"checkout\" backend \"c1\"", "port"), ("health-check-port", CHECKOUT, "health_check.port")]),
        case("the same VIP twice", &[("name = \"dns6\"\naddress = \"2001:2::53\"", "name = \"dns6\"\naddress = \"198.18.100.1\"\n"), ("port = 53\nprotocol = \"udp\"", "port = 443\nprotocol = \"tcp\"")],
            &[("duplicate-vip", DNS6, "address"), ("family-mismatch", "vip \"dns6\" backend \"d1\"", "address"), ("family-mismatch", "vip \"dns6\" backend \"d2\"", "address")]),
        case("two VIPs with one name", &[("name = \"dns6\"", "name = \"checkout\"")],
            &[("duplicate-name", CHECKOUT, "name")]),
        case("weight above the maximum", &[(C1_LINE, r#"{ name = "c1", address = "198.18.0.11", weight = 20000 }"#), (C2_LINE, r#"{ name = "c2", address = "198.18.0.12", weight = 20000 }"#), (C3_LINE, r#"{ name = "c3", address = "198.18.0.13", weight = 20000 }"#)],
            &[("weight-range", C1, "weight"), ("weight-range", C2, "weight"), ("weight-range", C3, "weight")]),
        // Tables and guards.
        case("table size not prime", &[("interface = \"eth1\"", "interface = \"eth1\"\ntable_size = 65536")],
            &[("table-size", "config", "table_size"), ("guard-unchecked", CHECKOUT, "backend"), ("guard-unchecked", DNS6, "backend")]),
        case("unknown table algorithm", &[("interface = \"eth1\"", "interface = \"eth1\"\ntable = \"ring\"")],
            &[("invalid-value", "config", "table")]),
        case("unknown table algorithm for one VIP", &[("name = \"dns6\"", "name = \"dns6\"\ntable = 3")],
            &[("invalid-value", DNS6, "table")]),
        case("connection table too small", &[("interface = \"eth1\"", "interface = \"eth1\"\nconnection_table_size = 10")],
            &[("connection-table-size", "config", "connection_table_size")]),
        case("UDP idle timeout of zero", &[("interface = \"eth1\"", "interface = \"eth1\"\nudp_idle_s = 0")],
            &[("idle-timeout", "config", "udp_idle_s")]),
        case("TCP idle timeout beyond a week", &[("interface = \"eth1\"", "interface = \"eth1\"\ntcp_idle_s = 700000")],
            &[("idle-timeout", "config", "tcp_idle_s")]),
        case("flow hash seed too short", &[("interface = \"eth1\"", "interface = \"eth1\"\nflow_hash_seed = \"00112233\"")],
            &[("invalid-value", "config", "flow_hash_seed")]),
        case("flow hash seed of zeros", &[("interface = \"eth1\"", "interface = \"eth1\"\nflow_hash_seed = \"00000000000000000000000000000000\"")],
            &[("invalid-value", "config", "flow_hash_seed")]),
        case("max_backends below the backends configured", &[("interface = \"eth1\"", "interface = \"eth1\"\nmax_backends = 4")],
            &[("too-many-backends", "config", "backend")]),
        case("max_backends of zero", &[("interface = \"eth1\"", "interface = \"eth1\"\nmax_backends = 0")],
            &[("max-backends", "config", "max_backends"), ("too-many-backends", "config", "backend")]),
        case("table too small for the backends", &[("interface = \"eth1\"", "interface = \"eth1\"\ntable_size = 251")],
            &[("table-too-small", CHECKOUT, "backend")]),
        case("concentration limit of zero", &[("interface = \"eth1\"", "interface = \"eth1\"\n[guards]\nmax_backend_share = 0\n[[vip]]\nname = \"x\"\naddress = \"198.18.100.9\"\nport = 1\nprotocol = \"tcp\"\nbackend = [{ address = \"198.18.0.91\" }, { address = \"198.18.0.92\" }]")],
            &[("guard-range", "guards", "max_backend_share"),
              ("concentration", "vip \"x\" backend #1 (198.18.0.91)", "weight"), ("concentration", "vip \"x\" backend #2 (198.18.0.92)", "weight"),
              ("concentration", C1, "weight"), ("concentration", C2, "weight"), ("concentration", C3, "weight"),
              ("concentration", "vip \"dns6\" backend \"d1\"", "weight"), ("concentration", "vip \"dns6\" backend \"d2\"", "weight")]),
        case("blast radius above 100%", &[("protocol = \"udp\"", "protocol = \"udp\"\nguards = { max_flows_moved = 1.5 }")],
            &[("guard-range", DNS6_GUARDS, "max_flows_moved")]),
        case("min_backends of zero", &[("protocol = \"tcp\"", "protocol = \"tcp\"\nguards = { min_backends = 0 }")],
            &[("guard-range", CHECKOUT_GUARDS, "min_backends")]),
        case("unknown guard key", &[("protocol = \"tcp\"", "protocol = \"tcp\"\nguards = { allow_everything = true }")],
            &[("unknown-key", CHECKOUT_GUARDS, "allow_everything")]),
        // Health checks, API, interface.
        case("health-check timeout not below the interval", &[("interface = \"eth1\"", "interface = \"eth1\"\n[health_check]\ninterval_ms = 1000\ntimeout_ms = 1000\n[[vip]]\nname = \"y\"\naddress = \"198.18.100.8\"\nport = 2\nprotocol = \"tcp\"\nbackend = [{ address = \"198.18.0.81\" }, { address = \"198.18.0.82\" }]")],
            &[("health-check", "health_check", "timeout_ms")]),
        case("health-check rise of zero", &[("interface = \"eth1\"", "interface = \"eth1\"\nhealth_check = { rise = 0 }")],
            &[("health-check", "health_check", "rise")]),
        case("unknown health-check kind", &[("interface = \"eth1\"", "interface = \"eth1\"\nhealth_check = { kind = \"icmp\" }")],
            &[("invalid-value", "health_check", "kind")]),
        case("HTTP path without a slash", &[("interface = \"eth1\"", "interface = \"eth1\"\nhealth_check = { kind = \"http\", http_path = \"healthz\" }")],
            &[("health-check", "health_check", "http_path")]),
        case("HTTP statuses backwards", &[("interface = \"eth1\"", "interface = \"eth1\"\nhealth_check = { http_status = [\"300-200\"] }")],
            &[("invalid-value", "health_check", "http_status")]),
        case("panic threshold above 1, no damping budget", &[("interface = \"eth1\"", "interface = \"eth1\"\nhealth_check = { panic_threshold = 1.5, max_changes_per_minute = 0 }")],
            &[("health-check", "health_check", "panic_threshold"), ("health-check", "health_check", "max_changes_per_minute")]),
        case("a VIP's and a backend's bad overrides, reported where written", &[("protocol = \"tcp\"", "protocol = \"tcp\"\nhealth_check = { fall = 0, address = \"198.18.0.1\" }"), (C1_LINE, r#"{ name = "c1", address = "198.18.0.11", health_check = { rise = 0, address = "198.18.0.99", port = 8080 } }"#)],
            &[("health-check", "vip \"checkout\" health_check", "fall"), ("unknown-key", "vip \"checkout\" health_check", "address"), ("health-check", "vip \"checkout\" backend \"c1\" health_check", "rise")]),
        case("an any-port VIP checked at its port 0", &[("port = 443", "port = 0")],
            &[("health-check-port", CHECKOUT, "health_check.port")]),
        case("an any-port UDP VIP checked at its port 0", &[("port = 53", "port = 0"), ("health_check = { port = 8053 }", "")],
            &[("health-check-port", DNS6, "health_check.port")]),
        case("an any-port VIP whose backends but one inherit port 0", &[("port = 443", "port = 0"), (C1_LINE, r#"{ name = "c1", address = "198.18.0.11", health_check = { port = 8080 } }"#)],
            &[("health-check-port", CHECKOUT, "health_check.port")]),
        case("health_check.port = 0 written globally", &[("interface = \"eth1\"", "interface = \"eth1\"\nhealth_check = { port = 0 }")],
            &[("health-check", "health_check", "port")]),
        case("health_check.port = 0 written on a VIP", &[("protocol = \"tcp\"", "protocol = \"tcp\"\nhealth_check = { port = 0 }")],
            &[("health-check", "vip \"checkout\" health_check", "port")]),
        case("health_check.port = 0 written on one backend", &[(C1_LINE, r#"{ name = "c1", address = "198.18.0.11", health_check = { port = 0 } }"#)],
            &[("health-check", "vip \"checkout\" backend \"c1\" health_check", "port")]),
        case("an any-port VIP with its own check port (control)", &[("port = 443", "port = 0"), ("protocol = \"tcp\"", "protocol = \"tcp\"\nhealth_check = { port = 8080 }")], &[]),
        case("an any-port VIP that is not checked (control)", &[("port = 443", "port = 0"), ("protocol = \"tcp\"", "protocol = \"tcp\"\nhealth_check = { kind = \"none\" }")], &[]),
        case("relative API socket", &[("interface = \"eth1\"", "interface = \"eth1\"\napi = { socket = \"fulcrum.sock\" }")],
            &[("relative-path", "api", "socket")]),
        // Groups and announcements.
        case("a group without a shared seed", &[("interface = \"eth1\"", "interface = \"eth1\"\ngroup = { name = \"edge\" }")],
            &[("group-without-seed", "config", "flow_hash_seed")]),
        case("a group without a name", &[("interface = \"eth1\"", "interface = \"eth1\"\nflow_hash_seed = \"00112233445566778899aabbccddeeff\"\ngroup = { name = \"\" }")],
            &[("group-name", "group", "name")]),
        case("announcing without an include file", &[("interface = \"eth1\"", "interface = \"eth1\"\nannounce = { drain_s = 5 }")],
            &[("missing-key", "announce", "bird_include")]),
        case("announcing into a relative include file, too long a drain", &[("interface = \"eth1\"", "interface = \"eth1\"\nannounce = { bird_include = \"fulcrum.conf\", drain_s = 3600 }")],
            &[("relative-path", "announce", "bird_include"), ("drain-too-long", "announce", "drain_s")]),
        case("metrics address without a port", &[("interface = \"eth1\"", "interface = \"eth1\"\napi = { metrics = \"127.0.0.1\" }")],
            &[("invalid-value", "api", "metrics")]),
        case("interface name too long", &[("interface = \"eth1\"", "interface = \"an-interface-name-too-long\"")],
            &[("interface-name", "config", "interface")]),
        case("broadcast backend MAC", &[(C1_LINE, r#"{ name = "c1", address = "198.18.0.11", mac = "ff:ff:ff:ff:ff:ff" }"#)],
            &[("invalid-mac", C1, "mac")]),
        case("all-zero backend MAC", &[(C1_LINE, r#"{ name = "c1", address = "198.18.0.11", mac = "00:00:00:00:00:00" }"#)],
            &[("invalid-mac", C1, "mac")]),
        case("two backends with one name", &[(C2_LINE, r#"{ name = "c1", address = "198.18.0.12", weight = 1 }"#)],
            &[("duplicate-name", C1, "name")]),
        case("an empty backend name", &[(C2_LINE, r#"{ name = "", address = "198.18.0.12", weight = 1 }"#)],
            &[("empty-name", "vip \"checkout\" backend \"\"", "name")]),
        // Printed text: names and paths are shown by plan, status, tables
        // and the logs, so they must be visible and must not forge lines or
        // drive the terminal.
        case("a VIP name that forges a line", &[("name = \"checkout\"", r#"name = "checkout\nerror: forged line""#)],
            &[("control-character", r#"vip "checkout\nerror: forged line""#, "name")]),
        case("a backend name that clears the screen", &[(C1_LINE, r#"{ name = "\u001b[2J", address = "198.18.0.11", weight = 1 }"#)],
            &[("control-character", r#"vip "checkout" backend "\u{1b}[2J""#, "name")]),
        case("a backend name that turns the text around it", &[(C1_LINE, r#"{ name = "c1\u202e", address = "198.18.0.11", weight = 1 }"#)],
            &[("control-character", r#"vip "checkout" backend "c1\u{202e}""#, "name")]),
        case("a VIP name of spaces", &[("name = \"checkout\"", "name = \"   \"")],
            &[("empty-name", "vip \"   \"", "name")]),
        case("a backend name of a tab", &[(C1_LINE, r#"{ name = "\t", address = "198.18.0.11", weight = 1 }"#)],
            &[("empty-name", r#"vip "checkout" backend "\t""#, "name")]),
        case("an empty VIP name", &[("name = \"checkout\"", "name = \"\"")],
            &[("empty-name", "vip \"\"", "name")]),
        case("a group name of spaces", &[("interface = \"eth1\"", "interface = \"eth1\"\nflow_hash_seed = \"00112233445566778899aabbccddeeff\"\ngroup = { name = \" \" }")],
            &[("group-name", "group", "name")]),
        case("a group name with an escape", &[("interface = \"eth1\"", "interface = \"eth1\"\nflow_hash_seed = \"00112233445566778899aabbccddeeff\"\ngroup = { name = \"edge\\u001b[31m\" }")],
            &[("control-character", "group", "name")]),
        case("an interface name with an escape", &[("interface = \"eth1\"", "interface = \"eth\\u001b\"")],
            &[("interface-name", "config", "interface")]),
        case("an HTTP path with an escape", &[("interface = \"eth1\"", "interface = \"eth1\"\nhealth_check = { kind = \"http\", http_path = \"/healthz\\u001b[2J\" }")],
            &[("health-check", "health_check", "http_path")]),
        case("an API socket path with a line break", &[("interface = \"eth1\"", "interface = \"eth1\"\napi = { socket = \"/run/fulcrum/api\\n.sock\" }")],
            &[("control-character", "api", "socket")]),
        case("one IPv6 backend spelt two ways", &[(r#"{ name = "d2", address = "2001:2::12" }"#, r#"{ address = "2001:0002:0000::0011" }"#)],
            &[("duplicate-backend", "vip \"dns6\" backend #2 (2001:2::11)", "address"), ("guard-unchecked", DNS6, "backend")]),
        case("one backend as IPv4 and as IPv4-mapped IPv6", &[(C2_LINE, r#"{ name = "c2", address = "::ffff:198.18.0.11", weight = 1 }"#)],
            &[("identity-clash", C2, "address"), ("family-mismatch", C2, "address"), ("guard-unchecked", CHECKOUT, "backend")]),
        case("the same IPv4-mapped clash in a VIP with an unreadable key", &[
                ("protocol = \"tcp\"", "protocol = \"tcpp\""),
                (C2_LINE, r#"{ name = "c2", address = "::ffff:198.18.0.11", weight = 1 }"#)],
            &[("invalid-value", CHECKOUT, "protocol"), ("identity-clash", C2, "address")]),
        // Outlier detection: judged against peers, for a bounded time.
        case("outliers judged against no peer", &[("interface = \"eth1\"", "interface = \"eth1\"\noutlier = { min_backends = 1 }")],
            &[("outlier", "outlier", "min_backends")]),
        case("an outlier factor of 1 ejects the merely average", &[("interface = \"eth1\"", "interface = \"eth1\"\noutlier = { success_factor = 1.0 }")],
            &[("outlier", "outlier", "success_factor")]),
        case("a first ejection longer than the longest", &[("interface = \"eth1\"", "interface = \"eth1\"\noutlier = { base_ejection_s = 600 }")],
            &[("outlier", "outlier", "base_ejection_s")]),
        case("outlier ejection on a UDP VIP", &[("health_check = { port = 8053 }", "health_check = { port = 8053 }\neject_outliers = true")],
            &[("outlier-udp", DNS6, "eject_outliers")]),
        case("outlier ejection switched off on a TCP VIP is valid", &[("port = 443\n", "port = 443\neject_outliers = false\n")], &[]),
        case("unchanged text is valid (control)", &[(EXTRA, EXTRA)], &[]),
    ]
}

const CHECKOUT_GUARDS: &str = "vip \"checkout\" guards";
const DNS6_GUARDS: &str = "vip \"dns6\" guards";

#[test]
fn every_bad_config_gets_exactly_its_errors() {
    let cases = cases();
    assert!(cases.len() >= 40, "at least 40 bad configs");
    let mut failures = Vec::new();
    for case in &cases {
        let mut text = GOOD.to_string();
        for (from, to) in &case.edits {
            assert!(
                text.contains(from),
                "{}: edit target {from:?} not in the config",
                case.name
            );
            text = text.replacen(from, to, 1);
        }
        let validation = validate(&text);
        let got: BTreeSet<(String, String, String)> = validation
            .errors()
            .into_iter()
            .map(|p| (p.code.to_string(), p.location, p.field))
            .collect();
        let want: BTreeSet<(String, String, String)> = case
            .errors
            .iter()
            .map(|(c, l, f)| (c.to_string(), l.to_string(), f.to_string()))
            .collect();
        if got != want {
            failures.push(format!(
                "{}:\n    expected {want:?}\n    got      {got:?}",
                case.name
            ));
        }
        if case.errors.is_empty() != validation.is_valid() {
            failures.push(format!("{}: validity disagrees with the errors", case.name));
        }
        for problem in validation.errors() {
            assert!(!problem.message.is_empty(), "{}: empty message", case.name);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_messages_tell_the_operator_what_they_did() {
    let text = GOOD.replacen(
        C1_LINE,
        r#"{ name = "c1", address = "198.18.0.11", weight = 100 }"#,
        1,
    );
    let errors = validate(&text).errors();
    let shown = errors[0].to_string();
    assert_eq!(
        shown,
        "error: vip \"checkout\" backend \"c1\": weight = 100: this backend would take \
         98.0% of the VIP's new flows, above the limit of 50.0% (guards.max_backend_share; \
         raise it on this VIP if intended) [concentration]"
    );
}

/// A refused value is echoed cut short and with its control characters
/// escaped, so that even a hostile one cannot flood the output, forge a
/// line or drive the terminal.
#[test]
fn refused_values_are_echoed_short_and_inert() {
    let long = "x".repeat(50 << 10);
    let text = GOOD.replacen(
        "interface = \"eth1\"",
        &format!("interface = \"\\u001b[2J{long}\""),
        1,
    );
    let errors = validate(&text).errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let shown = errors[0].to_string();
    assert!(shown.len() < 400, "{} bytes: {shown}", shown.len());
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
    assert!(shown.contains(r#"\u{1b}[2J"#), "{shown}");
    // The value as quoted: 51,204 bytes, two quotes, ESC spelt `\u{1b}`.
    assert!(shown.contains("… (51211 bytes)"), "{shown}");
}

/// A long name is cut short in the location of every problem it names: a
/// 100 kB VIP name with a problem on each of its backends is not repeated
/// whole in each (that took 13 GB for a 1 MiB config).
#[test]
fn a_long_name_is_cut_short_in_every_location() {
    let name = "n".repeat(100_000);
    let text = GOOD
        .replacen("name = \"checkout\"", &format!("name = \"{name}\""), 1)
        .replace("address = \"198.18.0.1", "address = \"127.0.0.1");
    let errors = validate(&text).errors();
    assert_eq!(errors.len(), 3, "{errors:?}");
    for error in &errors {
        assert!(error.location.len() < 160, "{}", error.location);
        assert!(
            error.location.contains("… (100000 bytes)"),
            "{}",
            error.location
        );
    }
}

#[test]
fn metrics_beyond_localhost_is_a_warning_not_an_error() {
    let text = GOOD.replacen(
        "interface = \"eth1\"",
        "interface = \"eth1\"\napi = { metrics = \"0.0.0.0:9487\" }",
        1,
    );
    let validation = validate(&text);
    assert!(validation.is_valid());
    assert_eq!(validation.problems.len(), 1);
    assert_eq!(validation.problems[0].code, "metrics-exposed");
}

#[test]
fn explicit_overrides_allow_what_the_guards_refuse() {
    let text = GOOD
        .replacen(C2_ROW, "", 1)
        .replacen(C3_ROW, "", 1)
        .replacen(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nguards = { min_backends = 1 }",
            1,
        );
    let validation = validate(&text);
    assert!(validation.is_valid(), "{:?}", validation.problems);
    let heavy = GOOD
        .replacen(
            C1_LINE,
            r#"{ name = "c1", address = "198.18.0.11", weight = 8 }"#,
            1,
        )
        .replacen(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nguards = { max_backend_share = 0.8 }",
            1,
        );
    assert!(validate(&heavy).is_valid());
}

/// One more VIP than the data plane holds, each a valid one.
fn one_vip_too_many() -> String {
    vips(lb_common::maps::MAX_VIPS + 1, "")
}

/// `count` valid VIPs of two backends each, after the top-level `settings`.
fn vips(count: u32, settings: &str) -> String {
    let mut text = settings.to_string();
    for v in 0..count {
        text += &format!(
            "[[vip]]\naddress = \"198.19.{}.{}\"\nport = 80\nprotocol = \"tcp\"\nbackend = [{{ address = \"198.18.0.1\" }}, {{ address = \"198.18.0.2\" }}]\n",
            v / 250,
            v % 250 + 1
        );
    }
    text
}

#[test]
fn the_data_planes_limits_are_checked_before_run() {
    let codes: Vec<_> = validate(&one_vip_too_many())
        .errors()
        .into_iter()
        .map(|p| p.code)
        .collect();
    assert_eq!(codes, vec!["too-many-vips"]);
}

/// Tables cost memory and time per VIP (a VIP's table is up to 2 MiB): a
/// count beyond what the data plane holds is refused before any is built.
#[test]
fn a_config_beyond_the_data_planes_capacities_builds_no_table() {
    let setting = |line: &str| GOOD.replacen("interface = \"eth1\"", line, 1);
    let cases = [
        ("too-many-vips", one_vip_too_many()),
        ("too-many-backends", setting("max_backends = 4")),
        ("table-too-small", setting("table_size = 251")),
        ("table-slots", vips(129, "table_size = 65537\n")),
    ];
    for (code, text) in cases {
        let validation = validate(&text);
        let codes: Vec<_> = validation.errors().into_iter().map(|p| p.code).collect();
        assert!(codes.iter().any(|c| c == code), "{code}: {codes:?}");
        let built = validation.tables.iter().filter(|t| t.is_some()).count();
        assert_eq!(built, 0, "{code}: {built} tables built");
    }
}

/// The lookup tables of all VIPs together hold at most `MAX_TABLE_SLOTS`
/// slots (128 VIPs at the default table size): one VIP more is refused
/// on `table_size`, and the budget itself is accepted.
#[test]
fn the_lookup_tables_slots_are_budgeted() {
    let at = |count: u32| vips(count, "table_size = 65537\n");
    let over = validate(&at(129)).errors();
    let found: Vec<_> = over
        .iter()
        .map(|p| {
            (
                &*p.code,
                p.location.as_str(),
                p.field.as_str(),
                p.value.as_str(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![("table-slots", "config", "table_size", "65537")],
        "{over:?}"
    );
    assert_eq!(
        over[0].message,
        "129 VIPs × table_size 65537 = 8454273 slots, above the budget of 8388736 \
         (32 MiB of kernel memory per bank); lower table_size or split the VIPs over hosts"
    );
    let budget = validate(&at(128));
    assert!(budget.is_valid(), "{:?}", budget.errors());
}

/// A table size that is not allowed gets its own error, not a slot count
/// made of it too.
#[test]
fn a_refused_table_size_is_not_counted_against_the_slot_budget() {
    let codes: BTreeSet<_> = validate(&vips(129, "table_size = 65536\n"))
        .errors()
        .into_iter()
        .map(|p| p.code)
        .collect();
    assert_eq!(
        codes,
        BTreeSet::from(["table-size".into(), "guard-unchecked".into()]),
        "{codes:?}"
    );
}

#[test]
fn an_empty_config_is_valid_but_warned_about() {
    let validation = validate("");
    assert!(validation.is_valid());
    assert_eq!(validation.problems[0].code, "no-vips");
}

#[test]
fn a_config_whose_only_vip_is_unreadable_is_not_called_empty() {
    let text = "[[vip]]\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcpp\"\n\
                backend = [{ address = \"198.18.0.1\" }, { address = \"198.18.0.2\" }]\n";
    let validation = validate(text);
    let codes: Vec<_> = validation.problems.iter().map(|p| &*p.code).collect();
    assert_eq!(codes, vec!["invalid-value"], "{:?}", validation.problems);
}

/// Changes the plan must refuse without `--force` because they loosen the
/// guards in force: each names the current config's edits, the new
/// config's edits, and exactly the errors that must come back.
struct PlanCase {
    name: &'static str,
    current: Vec<(&'static str, &'static str)>,
    next: Vec<(&'static str, &'static str)>,
    refused: Vec<(&'static str, &'static str, &'static str)>,
}

fn plan_case(
    name: &'static str,
    current: &[(&'static str, &'static str)],
    next: &[(&'static str, &'static str)],
    refused: &[(&'static str, &'static str, &'static str)],
) -> PlanCase {
    PlanCase {
        name,
        current: current.to_vec(),
        next: next.to_vec(),
        refused: refused.to_vec(),
    }
}

const CHECKOUT_PLAN: &str = "vip \"checkout\" (198.18.100.1:443/tcp)";
const CHECKOUT_PLAN_GUARDS: &str = "vip \"checkout\" (198.18.100.1:443/tcp) guards";
const SOLO_PLAN_GUARDS: &str = "vip \"solo\" (198.18.100.2:80/tcp) guards";
const INTERFACE: &str = "interface = \"eth1\"";
const CHECKOUT_PROTOCOL: &str = "protocol = \"tcp\"";
const SEED_WEIGHTS: [(&str, &str); 3] = [
    (
        C1_LINE,
        r#"{ name = "c1", address = "198.18.0.11", weight = 100 }"#,
    ),
    (
        C2_LINE,
        r#"{ name = "c2", address = "198.18.0.12", weight = 0 }"#,
    ),
    (
        C3_LINE,
        r#"{ name = "c3", address = "198.18.0.13", weight = 0 }"#,
    ),
];
const ALL_LOOSE: &str = "{ min_backends = 1, max_backend_share = 1.0, max_flows_moved = 1.0, max_capacity_removed = 1.0 }";
const DNS6_END: &str = "{ name = \"d2\", address = \"2001:2::12\" },\n]\n";
const SOLO: &str = "{ name = \"d2\", address = \"2001:2::12\" },\n]\n\n[[vip]]\nname = \"solo\"\naddress = \"198.18.100.2\"\nport = 80\nprotocol = \"tcp\"\n\
                    guards = { min_backends = 1, max_backend_share = 1.0 }\n\
                    backend = [{ name = \"s1\", address = \"198.18.0.21\" }]\n";

fn seed_with(guards_edit: (&'static str, &'static str)) -> Vec<(&'static str, &'static str)> {
    let mut edits = SEED_WEIGHTS.to_vec();
    edits.push(guards_edit);
    edits
}

#[rustfmt::skip]
fn plan_cases() -> Vec<PlanCase> {
    let seed_vip = seed_with((CHECKOUT_PROTOCOL, "protocol = \"tcp\"\nguards = { min_backends = 1, max_backend_share = 1.0, max_flows_moved = 1.0, max_capacity_removed = 1.0 }"));
    let seed_global = seed_with((INTERFACE, "interface = \"eth1\"\nguards = { min_backends = 1, max_backend_share = 1.0, max_flows_moved = 1.0, max_capacity_removed = 1.0 }"));
    assert!(seed_vip[3].1.contains(ALL_LOOSE) && seed_global[3].1.contains(ALL_LOOSE));
    let outage = [
        ("too-few-backends", CHECKOUT, "backend"),
        ("concentration", C1, "weight"),
        ("blast-radius-flows", CHECKOUT_PLAN, "flows_moved"),
        ("blast-radius-capacity", CHECKOUT_PLAN, "capacity_removed"),
    ];
    let loosened_all = |location| [
        ("guard-loosened", location, "max_backend_share"),
        ("guard-loosened", location, "min_backends"),
        ("guard-loosened", location, "max_flows_moved"),
        ("guard-loosened", location, "max_capacity_removed"),
    ];
    vec![
        plan_case("a VIP's guards loosened", &[],
            &[(CHECKOUT_PROTOCOL, "protocol = \"tcp\"\nguards = { max_backend_share = 0.8 }")],
            &[("guard-loosened", CHECKOUT_PLAN_GUARDS, "max_backend_share")]),
        plan_case("the global guards loosened", &[],
            &[(INTERFACE, "interface = \"eth1\"\nguards = { max_flows_moved = 0.9, min_backends = 1 }")],
            &[("guard-loosened", "guards", "min_backends"), ("guard-loosened", "guards", "max_flows_moved")]),
        plan_case("a stricter override dropped", &[(CHECKOUT_PROTOCOL, "protocol = \"tcp\"\nguards = { max_backend_share = 0.4 }")],
            &[],
            &[("guard-loosened", CHECKOUT_PLAN_GUARDS, "max_backend_share")]),
        plan_case("a VIP added with looser guards than the global ones in force", &[],
            &[(DNS6_END, SOLO)],
            &[("guard-loosened", SOLO_PLAN_GUARDS, "max_backend_share"), ("guard-loosened", SOLO_PLAN_GUARDS, "min_backends"),
              ("too-few-backends", "vip \"solo\"", "backend"), ("concentration", "vip \"solo\" backend \"s1\"", "weight")]),
        plan_case("the seed's outage, with the VIP's guards loosened", &[], &seed_vip,
            &[&loosened_all(CHECKOUT_PLAN_GUARDS)[..], &outage[..]].concat()),
        plan_case("the seed's outage, with the global guards loosened", &[], &seed_global,
            &[&loosened_all("guards")[..], &outage[..]].concat()),
        plan_case("tightening a guard (accepted)", &[],
            &[(INTERFACE, "interface = \"eth1\"\nguards = { max_flows_moved = 0.2 }"),
              (CHECKOUT_PROTOCOL, "protocol = \"tcp\"\nguards = { max_backend_share = 0.4, min_backends = 3 }")],
            &[]),
        plan_case("a global loosening under a VIP override that holds (only the global line)",
            &[(CHECKOUT_PROTOCOL, "protocol = \"tcp\"\nguards = { max_backend_share = 0.4 }")],
            &[(CHECKOUT_PROTOCOL, "protocol = \"tcp\"\nguards = { max_backend_share = 0.4 }"),
              (INTERFACE, "interface = \"eth1\"\nguards = { max_backend_share = 0.9 }")],
            &[("guard-loosened", "guards", "max_backend_share")]),
    ]
}

fn edited(edits: &[(&str, &str)], name: &str) -> String {
    let mut text = GOOD.to_string();
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "{name}: edit target {from:?} not in the config"
        );
        text = text.replacen(from, to, 1);
    }
    text
}

type Found = BTreeSet<(String, String, String)>;

fn found<'a>(problems: impl IntoIterator<Item = &'a lb_userspace::problem::Problem>) -> Found {
    problems
        .into_iter()
        .map(|p| (p.code.to_string(), p.location.clone(), p.field.clone()))
        .collect()
}

#[test]
fn a_change_is_judged_by_the_guards_in_force() {
    use lb_userspace::policy::plan::plan;
    let mut failures = Vec::new();
    for case in plan_cases() {
        let current = validate(&edited(&case.current, case.name));
        let next = validate(&edited(&case.next, case.name));
        assert!(
            current.is_valid(),
            "{}: current {:?}",
            case.name,
            current.problems
        );
        assert!(
            next.is_valid(),
            "{}: next alone is valid by its own guards: {:?}",
            case.name,
            next.problems
        );
        let judge = |force| plan(current.side(), next.side().unwrap(), force, None);
        let refused = judge(false);
        let want: Found = case
            .refused
            .iter()
            .map(|(c, l, f)| (c.to_string(), l.to_string(), f.to_string()))
            .collect();
        let got = found(refused.problems.iter().filter(|p| p.is_error()));
        if got != want {
            failures.push(format!(
                "{}:\n    expected {want:?}\n    got      {got:?}",
                case.name
            ));
        }
        if refused.accepted() != case.refused.is_empty() {
            failures.push(format!(
                "{}: accepted without --force = {}",
                case.name,
                refused.accepted()
            ));
        }
        let forced = judge(true);
        // Everything refused is recorded as overridden, the outage included.
        let want_forced = want.clone();
        if !forced.accepted() || found(&forced.forced) != want_forced {
            failures.push(format!(
                "{}: with --force: accepted = {}, recorded {:?}, expected {want_forced:?}",
                case.name,
                forced.accepted(),
                found(&forced.forced)
            ));
        }
        if forced
            .forced
            .iter()
            .any(|p| !p.message.contains("overridden by --force"))
        {
            failures.push(format!("{}: a forced override does not say so", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_first_install_uses_the_configs_own_guards_and_says_where_they_are_loose() {
    use lb_userspace::policy::plan::plan;
    let next = validate(&edited(&[(DNS6_END, SOLO)], "first install"));
    let planned = plan(None, next.side().unwrap(), false, None);
    assert!(planned.accepted(), "{:?}", planned.problems);
    assert!(planned.first_install);
    assert!(planned.forced.is_empty());
    let warned = found(&planned.problems);
    let want: Found = ["max_backend_share", "min_backends"]
        .iter()
        .map(|f| {
            (
                "guard-loosened".to_string(),
                SOLO_PLAN_GUARDS.to_string(),
                f.to_string(),
            )
        })
        .collect();
    assert_eq!(warned, want);
    assert!(planned.problems.iter().all(|p| !p.is_error()));
}
