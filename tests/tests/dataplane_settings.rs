//! Settings that shape the loaded program: the connection table's and the
//! backend maps' capacities come from the config, not only from the
//! compiled defaults.

use lb_tests::fixture::require_root;
use lb_userspace::dataplane::{Capacities, Dataplane};

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
