//! Integration tests: the real binaries on 127.0.0.1, port 0, each test in its own
//! temporary directory. One test binary (`autotests = false`) keeps link time down.

mod harness;
mod netns;

mod attack_liars;
mod attack_server;
mod attack_shares;
mod attack_tracker;
mod auth;
mod cache;
mod catalog;
mod cli_errors;
mod cli_scripts;
mod clock;
mod dirs;
mod encrypt;
mod faults;
mod fleet;
mod gateway;
mod hostile_http;
mod http_idle;
mod metrics;
mod netns_crowd;
mod network;
mod outputs;
mod pipeline;
mod pipelining;
mod player;
mod redis;
mod resilience;
mod restarts;
mod store_announce;
mod stream;
mod swarm;
mod tags;
mod tls;
mod uplink;
mod web_seed;
