//! EC2 backend: its config (always compiled) and its client (aws-sdk-ec2, cargo feature `ec2`,
//! the heaviest dependency, so it can be left out while iterating).

pub mod config;

#[cfg(feature = "ec2")]
mod client;
#[cfg(feature = "ec2")]
pub use client::*;
