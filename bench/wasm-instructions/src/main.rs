//! Runs a threshold-alert `.wasm` in wasmi 2.0 as perch does (fuel on,
//! lazy translation) with stand-in host imports, and prints the fuel one
//! event below and one above the limit takes. With `N=<events>` it then
//! times N events of each (`ONLY=below|above` for one of them), which
//! `run.sh` counts under callgrind. With `MARKS=1`, `log` calls made by the
//! guest print the fuel used since the one before (for ad-hoc probes);
//! with `EAGER=1` every function is translated up front.
use wasmi::*;
const TOPIC: &[u8] = b"sensors/kitchen/temperature";
const BELOW: &[u8] = br#"{"device":"kitchen","temperature":21.5}"#;
const ABOVE: &[u8] = br#"{"device":"kitchen","temperature":31.25}"#;
thread_local!(static MARK: std::cell::RefCell<(u64,)> = const { std::cell::RefCell::new((0,)) });
struct H {
    mem: Option<Memory>,
    pubs: usize,
}
fn main() {
    let mut cfg = Config::default();
    cfg.consume_fuel(true)
        .compilation_mode(if std::env::var_os("EAGER").is_some() {
            CompilationMode::Eager
        } else {
            CompilationMode::LazyTranslation
        });
    let engine = Engine::new(&cfg);
    let mut linker = Linker::<H>::new(&engine);
    linker
        .func_wrap(
            "perch",
            "publish",
            |mut c: Caller<'_, H>, _tp: i32, _tl: i32, _pp: i32, _pl: i32| {
                c.data_mut().pubs += 1;
                0i32
            },
        )
        .unwrap();
    linker
        .func_wrap(
            "perch",
            "config_get",
            |mut c: Caller<'_, H>, _kp: i32, _kl: i32, op: i32, oc: i32| {
                let v = b"30.0";
                let m = c.data().mem.unwrap();
                let n = v.len().min(oc as usize);
                m.data_mut(&mut c)[op as usize..op as usize + n].copy_from_slice(&v[..n]);
                v.len() as i32
            },
        )
        .unwrap();
    linker
        .func_wrap(
            "perch",
            "log",
            |c: Caller<'_, H>, _a: i32, p: i32, l: i32| {
                if std::env::var_os("MARKS").is_none() {
                    return;
                }
                let m = c.data().mem.unwrap();
                let d = m.data(&c);
                let msg = String::from_utf8_lossy(&d[p as usize..(p + l) as usize]).into_owned();
                let fuel = c.get_fuel().unwrap();
                MARK.with(|x| {
                    let mut x = x.borrow_mut();
                    if msg == "start" {
                        x.0 = fuel;
                        eprintln!("---");
                    } else {
                        eprintln!("{:>14} {:6}", msg, x.0 - fuel);
                    }
                    x.0 = fuel;
                });
            },
        )
        .unwrap();
    let n: usize = std::env::var("N").ok().map_or(0, |s| s.parse().unwrap());
    for path in std::env::args().skip(1) {
        let wasm = std::fs::read(&path).unwrap();
        let module = Module::new(&engine, &wasm).unwrap();
        let mut store = Store::new(&engine, H { mem: None, pubs: 0 });
        store.set_fuel(1 << 40).unwrap();
        let inst = linker.instantiate_and_start(&mut store, &module).unwrap();
        let mem = inst.get_memory(&store, "memory").unwrap();
        store.data_mut().mem = Some(mem);
        let buf = inst
            .get_typed_func::<(), i32>(&store, "perch_event_buffer")
            .unwrap()
            .call(&mut store, ())
            .unwrap() as usize;
        let on = inst
            .get_typed_func::<(i32, i32, i64), i32>(&store, "perch_on_event")
            .unwrap();
        let mut res = vec![];
        for (round, p) in [BELOW, ABOVE, BELOW, ABOVE].iter().enumerate() {
            let d = mem.data_mut(&mut store);
            d[buf..buf + TOPIC.len()].copy_from_slice(TOPIC);
            d[buf + TOPIC.len()..buf + TOPIC.len() + p.len()].copy_from_slice(p);
            store.set_fuel(1 << 40).unwrap();
            let rc = on
                .call(&mut store, (TOPIC.len() as i32, p.len() as i32, 1))
                .unwrap();
            assert_eq!(rc, 0, "{path}");
            if round >= 2 {
                res.push((1u64 << 40) - store.get_fuel().unwrap());
            }
        }
        let mut ns = [0f64; 2];
        for (k, p) in [BELOW, ABOVE].iter().enumerate() {
            if std::env::var("ONLY").is_ok_and(|o| o != ["below", "above"][k]) {
                continue;
            }
            let d = mem.data_mut(&mut store);
            d[buf..buf + TOPIC.len()].copy_from_slice(TOPIC);
            d[buf + TOPIC.len()..buf + TOPIC.len() + p.len()].copy_from_slice(p);
            let t = std::time::Instant::now();
            for _ in 0..n {
                store.set_fuel(1 << 40).unwrap();
                on.call(&mut store, (TOPIC.len() as i32, p.len() as i32, 1))
                    .unwrap();
            }
            if n > 0 {
                ns[k] = t.elapsed().as_nanos() as f64 / n as f64;
            }
        }
        println!(
            "{:28} fuel below {:6} above {:6} {:6} B  ns below {:5.0} above {:5.0}",
            path.rsplit('/').next().unwrap(),
            res[0],
            res[1],
            wasm.len(),
            ns[0],
            ns[1]
        );
    }
}
