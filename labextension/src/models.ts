/**
 * The JSON models of the server extension's /hpcllm/ endpoints, one interface each. They mirror
 * jupyter_hpcllm/serverext/models.py field for field (tests/test_serverext_models.py holds the two together).
 */

/** GET /hpcllm/profiles */
export interface ProfilesModel {
  profiles: string[];
  default: string;
}

export interface GpuTypeModel {
  name: string;
  memory_gb: number;
  counts: number[];
}

export interface DefaultsModel {
  time: string;
  cpus: number;
  mem: string;
  partition: string | null;
  account: string | null;
  idle_timeout: number;
}

/** GET /hpcllm/profiles/NAME: what a launch form offers. */
export interface ProfileModel {
  name: string;
  host: string;
  default_engine: string;
  engines: string[];
  model_root: string;
  gpu_types: GpuTypeModel[];
  default_gpu_type: string | null;
  defaults: DefaultsModel;
}

/**
 * GET /hpcllm/options: one launch option as a form offers it (the one definition every face is built
 * from). kind: "text", "integer", "number", "boolean" or "arguments".
 */
export interface OptionModel {
  name: string;
  kind: string;
  help: string;
  group: string;
  choices: string[] | null;
  minimum: number | null;
  maximum: number | null;
}

/** GET /hpcllm/parsers: the parser names the engine's image registers (or why they are not known). */
export interface ParserNamesModel {
  engine: string;
  tool: string[];
  reasoning: string[];
  problem: string | null;
}

export interface ParsersModel {
  tool: string | null;
  reasoning: string | null;
}

/** GET /hpcllm/models: one per model under the profile's model root. */
export interface ModelModel {
  name: string;
  size_gb: number;
  family: string | null;
  suggestion: string;
  problem: string;
  parsers: Record<string, ParsersModel>;
}

/** POST /hpcllm/plans: the plan (or why not, with the option at fault), and the sbatch script. */
export interface PlanModel {
  ok: boolean;
  headline: string;
  cost: string;
  problem: string;
  field: string | null;
  details: string[];
  gpus: number | null;
  gpu_type: string | null;
  gpu_hours: number | null;
  need_gb: number | null;
  script: string | null;
}

/** GET /hpcllm/servers (a list), GET /hpcllm/servers/JOB */
export interface ServerModel {
  job_id: string;
  state: string;
  model: string | null;
  engine: string | null;
  node: string | null;
  gpus: string | null;
  time_left: string | null;
  seconds_left: number | null;
  reason: string | null;
  expected_start: string | null;
  idle: string | null;
  ended_idle: boolean;
  left: string;
  walltime_warning: string | null;
}

/** DELETE /hpcllm/servers/JOB */
export interface StoppedModel {
  job_id: string;
  state: string;
  message: string;
}

/** GET /hpcllm/servers/JOB/logs */
export interface LogsModel {
  job_id: string;
  text: string;
}

/** GET /hpcllm/servers/JOB/metrics: the engine's live numbers, and the rows `status` shows. */
export interface MetricsModel {
  job_id: string;
  running: number | null;
  waiting: number | null;
  kv_cache: number | null;
  tokens_per_second: number | null;
  generation_tokens: number | null;
  rows: string[][];
}

/**
 * POST /hpcllm/servers (202), POST /hpcllm/servers/JOB/renew (202), GET and DELETE /hpcllm/launches/ID: a
 * launch, or a renewal (job_id: the successor once submitted).
 */
export interface LaunchModel {
  id: string;
  profile: string;
  model: string;
  job_id: string | null;
  stage: string;
  message: string;
  elapsed: number;
  node: string | null;
  reason: string | null;
  expected_start: string | null;
  shards: number[] | null;
  done: boolean;
  error: string | null;
  field: string | null;
}

/** Any endpoint's error (with its HTTP status): one paragraph, and the launch option at fault. */
export interface ErrorModel {
  error: string;
  field: string | null;
}
