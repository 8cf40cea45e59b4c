fn main() -> anyhow::Result<()> {
    env_logger::init();
    let iface = std::env::args().nth(1).unwrap_or_default();
    let cfg = vipwatch_common::Config { master: [192, 0, 2, 1], ..Default::default() };
    let w = vipwatch::ebpf::Watcher::attach(&iface, cfg, vipwatch::ebpf::ModeArg::Auto)?;
    println!("attached {:?} fell_back={}", w.mode, w.fell_back);
    std::thread::sleep(std::time::Duration::from_secs(1));
    println!("{:?}", w.maps.snapshot()?);
    Ok(())
}
