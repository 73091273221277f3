//! The rules a change must pass before anything is applied: validation of
//! one config, and the plan that judges a change against the config in
//! force (concentration, blast radius, guards that may not loosen
//! themselves), and what health checks may take out of a VIP before it
//! panics. Pure: configs in, findings out.

pub mod health;
pub mod plan;
pub mod validate;
