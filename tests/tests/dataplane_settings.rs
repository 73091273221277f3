//! Settings that shape the loaded program: the connection table's capacity
//! comes from the config, not only from the compiled default.

use lb_common::maps::CONN_TABLE_ENTRIES;
use lb_tests::fixture::require_root;
use lb_userspace::dataplane::Dataplane;

#[test]
fn the_connection_table_size_is_a_setting() {
    require_root();
    let small = Dataplane::load_with(4096).expect("loads with 4096 flows");
    assert_eq!(small.connection_table_capacity().unwrap(), 4096);
    let default = Dataplane::load().expect("loads with the default");
    assert_eq!(
        default.connection_table_capacity().unwrap(),
        CONN_TABLE_ENTRIES
    );
}
