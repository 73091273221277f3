//! Waiting for an event in a test: a condition polled until it holds, or
//! an error that says what was seen last once the time is up; never a
//! fixed sleep in its place.

use std::time::{Duration, Instant};

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(50);

/// Polls `probe` until it answers `Ok(done)` and returns `done`. While it
/// answers `Err(seen)` it is asked again; after `timeout` the last `seen`
/// goes to `explain`, whose words make the error. An error of `probe` or
/// `explain` ends the wait at once.
pub fn until<T, S>(
    timeout: Duration,
    mut probe: impl FnMut() -> anyhow::Result<Result<T, S>>,
    explain: impl FnOnce(S) -> anyhow::Result<String>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe()? {
            Ok(done) => return Ok(done),
            Err(seen) if Instant::now() > deadline => {
                anyhow::bail!("not within {timeout:?}: {}", explain(seen)?)
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}
