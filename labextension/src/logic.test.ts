import { describe, expect, it } from 'vitest';

import {
  clientCode,
  clock,
  fingerprint,
  formOptions,
  launchLine,
  newWarnings,
  nextInterval,
  parseAttached,
  serverCard,
  statusText
} from './logic';
import type { LaunchModel, MetricsModel, ServerModel } from './models';

const running: ServerModel = {
  job_id: '1234', state: 'RUNNING', model: 'gpt-oss-120b', engine: 'vllm', node: 'gpu01', gpus: '1 × h200',
  time_left: '3:59:10', seconds_left: 14350, reason: null, expected_start: null,
  idle: 'idle 12 min, ends itself in 48 min', ended_idle: false, left: '3:59:10', walltime_warning: null
};
const metrics: MetricsModel = {
  job_id: '1234', running: 2, waiting: 0, kv_cache: 0.34, tokens_per_second: 53, generation_tokens: 1000,
  rows: [['requests', '2 running, 0 waiting'], ['generation', '53 tokens/s'], ['KV cache', '34 % used']]
};

describe('serverCard', () => {
  it('shows the engine, state, GPUs, node, time left, idle time and the live numbers', () => {
    const card = serverCard(running, metrics);
    expect(card.title).toBe('gpt-oss-120b (job 1234)');
    expect(card.lines).toEqual([
      'vllm · RUNNING · 1 × h200', 'on gpu01', '3:59:10 left', 'idle 12 min, ends itself in 48 min',
      'requests: 2 running, 0 waiting', 'generation: 53 tokens/s', 'KV cache: 34 % used'
    ]);
    expect(card.renewable).toBe(false);
  });

  it('says why a pending job waits, and offers Renew near the time limit', () => {
    const pending = { ...running, state: 'PENDING', node: null, time_left: null, idle: null, left: '(Resources)' };
    expect(serverCard(pending, null).lines).toEqual(['vllm · PENDING · 1 × h200', 'waiting: (Resources)']);
    const late = { ...running, walltime_warning: 'Job 1234 reaches its time limit in 5 min' };
    expect(serverCard(late, null)).toMatchObject({ renewable: true, warning: late.walltime_warning });
  });
});

describe('clientCode', () => {
  it('attaches the kernel to the job on its profile', () => {
    expect(clientCode(running, 'ebi').split('\n').slice(0, 2)).toEqual([
      '%load_ext jupyter_hpcllm', '%hpcllm attach 1234 --profile ebi'
    ]);
    expect(clientCode(running, "my cluster's")).toContain("--profile 'my clusters'");
  });
});

describe('nextInterval', () => {
  it('backs off while nothing changes, and starts over when something does', () => {
    expect(nextInterval(10_000, false, 10_000, 120_000)).toBe(20_000);
    expect(nextInterval(80_000, false, 10_000, 120_000)).toBe(120_000);
    expect(nextInterval(120_000, true, 10_000, 120_000)).toBe(10_000);
  });

  it('tells a change from the same servers', () => {
    expect(fingerprint([running])).toBe(fingerprint([{ ...running }]));
    expect(fingerprint([running])).not.toBe(fingerprint([{ ...running, state: 'COMPLETING' }]));
  });
});

describe('formOptions', () => {
  it('leaves out empty fields, trims, and sends "none" in a parser field as no parser', () => {
    expect(formOptions({ model: ' Qwen3-8B ', gpus: '', time: '2:00:00', tool_call_parser: 'None',
      reasoning_parser: '', engine_args: '--max-model-len 4096' })).toEqual({
      model: 'Qwen3-8B', time: '2:00:00', tool_call_parser: '', engine_args: '--max-model-len 4096'
    });
    expect(formOptions({ partition: 'none' })).toEqual({ partition: 'none' }); // only parsers know "none"
  });
});

describe('launchLine', () => {
  const launch: LaunchModel = {
    id: '0123456789abcdef', profile: 'ebi', model: 'Qwen3-8B', job_id: '1000', stage: 'loading',
    message: 'Loading the weights: 3 of 4 files', elapsed: 75, node: 'gpu01', reason: null, expected_start: null,
    shards: [3, 4], done: false, error: null, field: null
  };

  it('shows the stage, the job, the time so far and how far the weights are', () => {
    expect(launchLine(launch)).toEqual({
      text: 'Qwen3-8B (job 1000): Loading the weights: 3 of 4 files [1:15]', fraction: 0.75, outcome: 'running'
    });
  });

  it('tells ready, failed (with the diagnosis) and cancelled apart', () => {
    expect(launchLine({ ...launch, done: true, stage: 'ready', shards: null }).outcome).toBe('ready');
    const failed = launchLine({ ...launch, done: true, stage: 'failed', error: 'CUDA out of memory: use 2 GPUs' });
    expect(failed).toMatchObject({ outcome: 'failed', fraction: 0.75 });
    expect(failed.text).toContain('CUDA out of memory: use 2 GPUs');
    expect(launchLine({ ...launch, done: true, stage: 'cancelled', error: 'Cancelled.' }).outcome).toBe('cancelled');
    expect(launchLine({ ...launch, job_id: null, shards: null }).text).toBe(
      'Qwen3-8B: Loading the weights: 3 of 4 files [1:15]'
    );
  });
});

describe('clock and the status bar', () => {
  it('writes seconds as m:ss or h:mm:ss', () => {
    expect([clock(0), clock(59.6), clock(3599), clock(3600 * 4 + 61)]).toEqual(['0:00', '1:00', '59:59', '4:01:01']);
    expect(clock(-5)).toBe('0:00');
  });

  it('counts the time left down from when the kernel answered', () => {
    const attached = { job_id: '1000', model: 'gpt-oss-120b', engine: 'vllm', node: 'gpu01', profile: 'ebi',
      seconds_left: 3600 };
    expect(statusText(attached, 60)).toBe('gpt-oss-120b · job 1000 · 59:00 left');
    expect(statusText({ ...attached, seconds_left: null }, 60)).toBe('gpt-oss-120b · job 1000');
  });

  it("reads the kernel's answer, and nothing else", () => {
    const text = '{"job_id": "1000", "model": "m", "engine": "vllm", "node": "gpu01", "profile": "ebi", "seconds_left": 5}';
    expect(parseAttached(text)?.job_id).toBe('1000');
    expect(parseAttached('None')).toBeNull();
    expect(parseAttached(undefined)).toBeNull();
    expect(parseAttached("'not json'")).toBeNull();
    expect(parseAttached('{"model": "m"}')).toBeNull();
  });
});

describe('newWarnings', () => {
  it('tells each job near its time limit once', () => {
    const late = { ...running, walltime_warning: 'Job 1234 reaches its time limit in 5 min' };
    const told = new Set<string>();
    expect(newWarnings([running, late], told)).toEqual([late]);
    told.add('1234');
    expect(newWarnings([late], told)).toEqual([]);
  });
});
