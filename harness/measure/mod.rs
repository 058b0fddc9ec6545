//! Measurements: workloads run in the guests, parsed into types, with the raw
//! tool output kept as evidence.

pub mod capture;
pub mod checksum;
pub mod connect;
pub mod cost;
pub mod counters;
pub mod fdb;
pub mod iperf3;
pub mod nic;
