//! `cohort-loadtest floor`: the physical floor of a quorum put on this
//! machine — two loopback round trips (client → coordinator → replicas) and
//! one `fdatasync` of an appended record (the replicas sync in parallel) —
//! measured with no Cohort code in the way, so that a put's p50 can be
//! quoted beside it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

/// Flags of `floor`.
#[derive(clap::Args)]
pub struct FloorArgs {
    /// Directory on the disk the data lives on; a scratch file is written there and removed.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// How many syncs and round trips to time (each figure is their median).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    samples: u32,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The figures, in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Floor {
    /// Median time to append 128 B to a file and `fdatasync` it.
    pub fdatasync_us: f64,
    /// Median round trip of one byte over TCP on 127.0.0.1 (Nagle off).
    pub round_trip_us: f64,
    /// Three replicas on this one disk syncing at once, as they do when a
    /// single machine runs them: the median time until the second of three
    /// concurrent appends and `fdatasync`s finished (a W=2 write waits for
    /// that). Not part of the floor; quoted beside it.
    pub second_of_three_us: Option<f64>,
}

impl Floor {
    /// Two round trips and one sync.
    pub fn put_floor_us(&self) -> f64 {
        2.0 * self.round_trip_us + self.fdatasync_us
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn fdatasync_us(dir: &std::path::Path, samples: u32) -> anyhow::Result<f64> {
    let path = dir.join(format!("cohort-floor-{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let record = [0x5au8; 128];
    let mut times = Vec::with_capacity(samples as usize);
    let result = (|| {
        for _ in 0..samples {
            let started = Instant::now();
            file.write_all(&record)?;
            file.sync_data()?;
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
        Ok::<_, std::io::Error>(())
    })();
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("appending to {}", path.display()))?;
    Ok(median(times))
}

/// Three threads append and sync their own file at once, `samples` times;
/// the median time to the second one done.
fn second_of_three_us(dir: &std::path::Path, samples: u32) -> anyhow::Result<f64> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
    let started = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let path = dir.join(format!("cohort-floor-{}-{i}.tmp", std::process::id()));
            let (barrier, started) = (barrier.clone(), started.clone());
            std::thread::spawn(move || -> std::io::Result<Vec<Instant>> {
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                let mut done = Vec::with_capacity(samples as usize);
                let result = (|| {
                    for _ in 0..samples {
                        if barrier.wait().is_leader() {
                            started.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
                        }
                        file.write_all(&[0x5au8; 128])?;
                        file.sync_data()?;
                        done.push(Instant::now());
                        barrier.wait();
                    }
                    Ok(())
                })();
                let _ = std::fs::remove_file(&path);
                result.map(|()| done)
            })
        })
        .collect();
    let mut finished = Vec::new();
    for thread in threads {
        finished.push(thread.join().map_err(|_| anyhow::anyhow!("a sync thread panicked"))??);
    }
    let started = started.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let seconds = started
        .iter()
        .enumerate()
        .map(|(round, start)| {
            let mut ends: Vec<Instant> = finished.iter().map(|f| f[round]).collect();
            ends.sort();
            ends[1].saturating_duration_since(*start).as_secs_f64() * 1e6
        })
        .collect();
    Ok(median(seconds))
}

fn round_trip_us(samples: u32) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        while stream.read(&mut byte)? == 1 {
            stream.write_all(&byte)?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut byte = [1u8; 1];
    let mut times = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let started = Instant::now();
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    drop(stream);
    echo.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(median(times))
}

/// Measures the floor.
pub fn measure(args: &FloorArgs) -> anyhow::Result<Floor> {
    Ok(Floor {
        fdatasync_us: fdatasync_us(&args.dir, args.samples)?,
        round_trip_us: round_trip_us(args.samples)?,
        second_of_three_us: Some(second_of_three_us(&args.dir, args.samples)?),
    })
}

/// Runs `floor`: prints the figures and writes them as JSON when asked.
pub fn run(args: FloorArgs) -> anyhow::Result<()> {
    let floor = measure(&args)?;
    println!(
        "fdatasync of an appended 128 B: {:.0} µs; loopback TCP round trip: {:.0} µs; \
         quorum put floor (2 round trips + 1 sync): {:.0} µs; three syncs at once, the second done: {:.0} µs \
         (medians of {})",
        floor.fdatasync_us,
        floor.round_trip_us,
        floor.put_floor_us(),
        floor.second_of_three_us.unwrap_or(0.0),
        args.samples
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "fdatasync_us": floor.fdatasync_us,
            "round_trip_us": floor.round_trip_us,
            "put_floor_us": floor.put_floor_us(),
            "second_of_three_fdatasyncs_us": floor.second_of_three_us,
            "samples": args.samples,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Reads the figures `run` wrote as JSON.
pub fn parse(json: &serde_json::Value) -> Option<Floor> {
    Some(Floor {
        fdatasync_us: json["fdatasync_us"].as_f64()?,
        round_trip_us: json["round_trip_us"].as_f64()?,
        second_of_three_us: json["second_of_three_fdatasyncs_us"].as_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_measured_and_written_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("floor.json");
        let args = FloorArgs { dir: dir.path().to_path_buf(), samples: 5, json: Some(json.clone()) };
        run(args).unwrap();
        let floor = parse(&serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()).unwrap();
        assert!(floor.fdatasync_us > 0.0 && floor.round_trip_us > 0.0, "{floor:?}");
        assert!(floor.second_of_three_us.is_some_and(|us| us > 0.0), "{floor:?}");
        assert_eq!(floor.put_floor_us(), 2.0 * floor.round_trip_us + floor.fdatasync_us);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the scratch files are removed");
    }
}
