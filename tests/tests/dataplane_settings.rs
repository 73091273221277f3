//! Settings that shape the loaded program: the connection table's and the
//! backend maps' capacities come from the config, not only from the
//! compiled defaults; the XDP mode is what `--xdp-mode` asks, and the
//! kernel reports the mode in force.

use lb_tests::{fixture::require_root, netns::Netns};
use lb_userspace::{
    dataplane::{Capacities, Dataplane, XdpChoice},
    net::{XdpMode, xdp_mode},
};

#[test]
fn map_capacities_are_settings() {
    require_root();
    let wanted = Capacities {
        connection_table_size: 4096,
        max_backends: 200_000,
    };
    let custom = Dataplane::load_with(wanted).expect("loads with custom capacities");
    assert_eq!(custom.capacities().unwrap(), wanted);
    let default = Dataplane::load().expect("loads with the defaults");
    assert_eq!(default.capacities().unwrap(), Capacities::default());
}

/// A veth has native XDP, a bridge has not: `native` refuses to
/// fall back, `generic` and `auto` attach, and the kernel says which mode
/// runs.
#[test]
fn the_xdp_mode_is_as_asked_and_as_the_kernel_reports() {
    require_root();
    let netns = Netns::create(&format!("flmode-{}", std::process::id())).expect("namespace");
    netns
        .ip(&[
            "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ])
        .expect("veth");
    netns
        .ip(&["link", "add", "br0", "type", "bridge"])
        .expect("bridge");
    for link in ["veth0", "veth1", "br0"] {
        netns.ip(&["link", "set", link, "up"]).expect("up");
    }
    netns
        .enter(|| {
            let attach = |interface: &str, choice: XdpChoice| {
                let mut dataplane = Dataplane::load()?;
                let mode = dataplane.attach(interface, choice);
                let reported = xdp_mode(interface)?;
                Ok::<_, anyhow::Error>((
                    mode.map_err(|e| format!("{:#}", anyhow::Error::from(e))),
                    reported,
                ))
            };
            let (refused, reported) = attach("br0", XdpChoice::Native)?;
            let why = refused.expect_err("native XDP on a bridge");
            assert!(why.contains("in native XDP mode"), "{why}");
            assert_eq!(reported, None, "nothing attached after the refusal");
            for (interface, choice, expected) in [
                ("br0", XdpChoice::Auto, XdpMode::Generic),
                ("br0", XdpChoice::Generic, XdpMode::Generic),
                ("veth0", XdpChoice::Auto, XdpMode::Native),
                ("veth0", XdpChoice::Native, XdpMode::Native),
                ("veth0", XdpChoice::Generic, XdpMode::Generic),
            ] {
                let (mode, reported) = attach(interface, choice)?;
                assert_eq!(mode, Ok(expected), "{interface} {choice:?}");
                assert_eq!(
                    reported,
                    Some(expected),
                    "{interface} {choice:?}: the kernel"
                );
                assert!(choice.allows(expected));
            }
            assert_eq!(xdp_mode("veth0")?, None, "dropped with its data plane");
            Ok(())
        })
        .expect("in the namespace");
}
