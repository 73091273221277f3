//! `fulcrum`: the command-line entry point.

fn main() -> anyhow::Result<()> {
    let dataplane = lb_userspace::dataplane::Dataplane::load()?;
    drop(dataplane);
    Ok(())
}
