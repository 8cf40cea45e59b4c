//! `vwlab-tcp-server PORT ID HOLD_MS [v6]`: the lab's TCP request/response
//! service (see `vipwatch_tests::tcp`), as a process of its own; on `::`
//! with `v6`, else on `0.0.0.0`.

use std::time::Duration;

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (port, id, hold_ms, v6) = match args.as_slice() {
        [port, id, hold_ms] => (port, id, hold_ms, false),
        [port, id, hold_ms, family] if family == "v6" => (port, id, hold_ms, true),
        _ => anyhow::bail!("usage: vwlab-tcp-server PORT ID HOLD_MS [v6]"),
    };
    vipwatch_tests::tcp::server_main(
        port.parse().context("PORT")?,
        id.parse().context("ID")?,
        Duration::from_millis(hold_ms.parse().context("HOLD_MS")?),
        v6,
    )
}
