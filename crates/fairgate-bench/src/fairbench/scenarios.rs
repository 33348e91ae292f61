//! What each fair-share scenario asks of the gateway: the simulator's timing, the tenants
//! (weight, streams, request shape) and how the run is timed (start ramp, steady window,
//! unloaded probe), plus the VTC bound U_gw that the asymmetry criteria are stated in.

/// Simulator timing shared by every scenario.
pub(crate) const SLOTS: usize = 16;
pub(crate) const DECODE_STEP_MS: f64 = 5.0;
pub(crate) const DECODE_PER_SEQ_US: f64 = 50.0;
pub(crate) const PREFILL_OVERHEAD_MS: f64 = 2.0;
pub(crate) const PREFILL_PER_TOKEN_US: f64 = 20.0;

/// Seconds a full batch needs to produce `out` tokens.
fn service_time(out: u64) -> f64 {
    out as f64 * (DECODE_STEP_MS + DECODE_PER_SEQ_US * SLOTS as f64 / 1e3) / 1e3
}

#[derive(Debug, Clone)]
pub(crate) struct TenantSpec {
    pub(crate) name: &'static str,
    pub(crate) weight: u32,
    pub(crate) streams: usize,
    pub(crate) prompt: u64,
    /// Output tokens per request; with `out_min`, drawn uniformly from `out_min..=out`.
    pub(crate) out: u64,
    pub(crate) out_min: Option<u64>,
    /// Counted in the accumulated-difference metric.
    pub(crate) backlogged: bool,
    /// Part of the start ramp.
    pub(crate) ramped: bool,
    /// Pause before each request, drawn uniformly from `0..think_ms` (0: back to back).
    pub(crate) think_ms: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) tenants: Vec<TenantSpec>,
    pub(crate) seconds: f64,
    /// Interval between the first `SLOTS` ramped streams (0: all start at once).
    pub(crate) ramp_step: f64,
    /// Measure this tenant alone for this long before the loaded run.
    pub(crate) probe: Option<(usize, f64)>,
}

impl Load {
    pub(crate) fn ramp_end(&self) -> f64 {
        self.ramp_step * SLOTS as f64
    }

    pub(crate) fn window(&self) -> (f64, f64) {
        let start = (0.2 * self.seconds)
            .max(self.ramp_end())
            .min(0.5 * self.seconds);
        (start, self.seconds)
    }

    /// VTC's U for this gateway: max(L_in, w_q · M_gw), M_gw = slots × largest request.
    pub(crate) fn u_gw(&self) -> f64 {
        let l_in = self.tenants.iter().map(|t| t.prompt).max().unwrap_or(0) as f64;
        let m = SLOTS as f64
            * self
                .tenants
                .iter()
                .map(|t| t.prompt + t.out)
                .max()
                .unwrap_or(0) as f64;
        l_in.max(2.0 * m)
    }
}

pub(crate) fn weighted_load(seconds: f64) -> Load {
    let t = |name, weight| TenantSpec {
        name,
        weight,
        streams: 24,
        prompt: 128,
        out: 128,
        out_min: None,
        backlogged: true,
        ramped: true,
        think_ms: 0.0,
    };
    Load {
        tenants: vec![t("w1", 1), t("w2", 2), t("w4", 4)],
        seconds,
        ramp_step: service_time(128) / SLOTS as f64,
        probe: None,
    }
}

/// `light_think_ms`: the light tenant's pause before each request (uniform in `0..` it). A
/// person or an editor does not send the next request the instant the last answer ends, so
/// its arrivals fall anywhere in the engine's step; with 0 every request leaves the moment the
/// previous stream ended, i.e. just after the engine began its next step (the worst phase).
pub(crate) fn interactive_load(seconds: f64, light_think_ms: f64) -> Load {
    Load {
        tenants: vec![
            TenantSpec {
                name: "light",
                weight: 1,
                streams: 1,
                prompt: 32,
                out: 32,
                out_min: None,
                backlogged: false,
                ramped: false,
                think_ms: light_think_ms,
            },
            TenantSpec {
                name: "heavy",
                weight: 1,
                streams: 3 * SLOTS,
                prompt: 64,
                out: 512,
                out_min: None,
                backlogged: true,
                ramped: true,
                think_ms: 0.0,
            },
        ],
        seconds,
        ramp_step: service_time(512) / SLOTS as f64,
        probe: Some((0, (seconds / 4.0).max(3.0))),
    }
}

pub(crate) fn asymmetry_load(seconds: f64) -> Load {
    Load {
        tenants: vec![
            TenantSpec {
                name: "a-short",
                weight: 1,
                streams: 32,
                prompt: 512,
                out: 32,
                out_min: None,
                backlogged: true,
                ramped: false,
                think_ms: 0.0,
            },
            TenantSpec {
                name: "b-long",
                weight: 1,
                streams: 24,
                prompt: 32,
                out: 512,
                out_min: None,
                backlogged: true,
                ramped: false,
                think_ms: 0.0,
            },
        ],
        seconds,
        ramp_step: 0.0,
        probe: None,
    }
}

/// [`interactive_load`] with heavy streams of 50–500 output tokens, so heavy streams do not
/// end in waves.
pub(crate) fn interactive_varied_load(seconds: f64, light_think_ms: f64) -> Load {
    let mut load = interactive_load(seconds, light_think_ms);
    load.tenants[1].out_min = Some(50);
    load.tenants[1].out = 500;
    load
}
