/**
 * The sidebar's launch form: the launch options (from GET /hpcllm/options, their one definition), with the
 * profile's defaults as placeholders and suggestions (models, GPU types and counts, the image's parser
 * names), planned live through POST /hpcllm/plans — the panel's checks and messages — and launched with
 * POST /hpcllm/servers. Its DOM is built once per profile, so a refresh of the sidebar never eats typing.
 */
import { ApiError, requestAPI } from './api';
import { element } from './dom';
import { formOptions, NO_PARSER } from './logic';
import type { LaunchModel, ModelModel, OptionModel, ParserNamesModel, PlanModel, ProfileModel } from './models';

/** Quiet time after an edit before the plan is asked for. */
export const REPLAN_DELAY = 400;

/** The options a launch form offers: those that change what runs (how `up` waits is the sidebar's). */
const SHOWN_GROUP = 'job';

export class LaunchForm {
  readonly node = element('form', 'jp-hpcllm-form');
  private readonly inputs = new Map<string, HTMLInputElement | HTMLSelectElement>();
  private readonly lists = new Map<string, HTMLDataListElement>();
  private readonly modelInfo = element('div', 'jp-hpcllm-facts');
  private readonly planNode = element('div', 'jp-hpcllm-plan');
  private readonly launchButton = element('button', 'jp-mod-styled jp-mod-accept', 'Launch');
  private readonly scriptButton = element('button', 'jp-mod-styled', 'Show script');
  private readonly scriptNode = element('pre', 'jp-hpcllm-log');
  private models: ModelModel[] = [];
  private plan: PlanModel | null = null;
  private timer: number | undefined;
  private asked = 0; // the latest plan request: an older answer arriving late is dropped
  private engine = ''; // the engine whose parser names the lists hold
  private launching = false; // a launch request is on its way: one per click
  private planned = -1; // the request whose plan is shown

  constructor(
    private readonly profile: ProfileModel,
    options: OptionModel[],
    private readonly launched: (launch: LaunchModel) => void
  ) {
    this.node.onsubmit = event => event.preventDefault();
    for (const option of options.filter(o => o.group === SHOWN_GROUP)) {
      this.node.appendChild(this.field(option));
      if (option.name === 'model') {
        this.node.appendChild(this.modelInfo);
      }
    }
    this.node.appendChild(this.planNode);
    const buttons = this.node.appendChild(element('div', 'jp-hpcllm-buttons'));
    buttons.append(this.launchButton, this.scriptButton);
    this.launchButton.type = this.scriptButton.type = 'button';
    this.launchButton.disabled = true;
    this.launchButton.onclick = () => void this.launch();
    this.scriptButton.onclick = () => {
      this.scriptNode.hidden = !this.scriptNode.hidden;
      this.scriptButton.textContent = this.scriptNode.hidden ? 'Show script' : 'Hide script';
    };
    this.scriptNode.hidden = true;
    this.node.appendChild(this.scriptNode);
    this.suggestGpuCounts();
    void this.loadModels();
    void this.loadParsers();
  }

  dispose(): void {
    window.clearTimeout(this.timer);
  }

  /** The form's values, by option name (text, as typed or chosen). */
  values(): Record<string, string> {
    const values: Record<string, string> = {};
    for (const [name, input] of this.inputs) {
      values[name] = input.value;
    }
    return values;
  }

  /** Set some values (as a user would) and plan again. */
  fill(values: Record<string, string>): void {
    for (const [name, value] of Object.entries(values)) {
      const input = this.inputs.get(name);
      if (input) {
        input.value = value;
      }
    }
    this.changed();
  }

  private field(option: OptionModel): HTMLElement {
    const label = element('label', 'jp-hpcllm-field');
    label.appendChild(element('span', 'jp-hpcllm-label', option.name.replace(/_/g, ' ')));
    const input = option.choices || option.name === 'gpu_type' ? this.select(option) : this.text(option);
    input.name = option.name;
    input.title = option.help;
    input.oninput = () => this.changed();
    label.appendChild(input);
    this.inputs.set(option.name, input);
    return label;
  }

  private select(option: OptionModel): HTMLSelectElement {
    const select = element('select', 'jp-mod-styled');
    const choices = option.choices ?? this.profile.gpu_types.map(g => g.name);
    const fallback = option.name === 'engine' ? this.profile.default_engine : this.profile.default_gpu_type;
    select.appendChild(element('option', '', `default (${fallback ?? 'automatic'})`)).value = '';
    for (const choice of choices) {
      select.appendChild(element('option', '', choice)).value = choice;
    }
    return select;
  }

  private text(option: OptionModel): HTMLInputElement {
    const input = element('input', 'jp-mod-styled');
    input.type = 'text';
    input.placeholder = this.placeholder(option);
    if (['model', 'gpus', 'tool_call_parser', 'reasoning_parser'].includes(option.name)) {
      const list = this.node.appendChild(element('datalist', ''));
      list.id = `jp-hpcllm-${this.profile.name}-${option.name}`.replace(/[^A-Za-z0-9_-]/g, '_');
      input.setAttribute('list', list.id);
      this.lists.set(option.name, list);
    }
    return input;
  }

  private placeholder(option: OptionModel): string {
    const defaults = this.profile.defaults as unknown as Record<string, unknown>;
    const value = defaults[option.name];
    if (value !== undefined && value !== null) {
      return `default: ${String(value)}`;
    }
    if (option.name === 'model') {
      return `a model under ${this.profile.model_root}`;
    }
    if (option.name.endsWith('_parser')) {
      return `automatic (or ${NO_PARSER})`;
    }
    return option.name === 'gpus' ? 'automatic: the smallest that holds the model' : '';
  }

  private suggest(name: string, values: string[], labels: string[] = values): void {
    const list = this.lists.get(name);
    if (!list) {
      return;
    }
    list.textContent = '';
    values.forEach((value, index) => {
      const option = list.appendChild(element('option', '', labels[index] === value ? '' : labels[index]));
      option.value = value;
    });
  }

  private suggestGpuCounts(): void {
    const chosen = this.inputs.get('gpu_type')?.value || this.profile.default_gpu_type;
    const type = this.profile.gpu_types.find(g => g.name === chosen) ?? this.profile.gpu_types[0];
    this.suggest('gpus', (type?.counts ?? []).map(String));
  }

  private async loadModels(): Promise<void> {
    try {
      this.models = await requestAPI<ModelModel[]>(`models?profile=${encodeURIComponent(this.profile.name)}`);
      this.suggest(
        'model',
        this.models.map(m => m.name),
        this.models.map(m => `${m.size_gb} GB · ${m.family ?? 'unknown family'} · ${m.suggestion || m.problem}`)
      );
    } catch (error) {
      this.modelInfo.textContent = `The models cannot be listed: ${message(error)}`;
    }
  }

  private async loadParsers(): Promise<void> {
    this.engine = this.inputs.get('engine')?.value ?? '';
    const engine = this.engine || this.profile.default_engine;
    const query = `?profile=${encodeURIComponent(this.profile.name)}&engine=${encodeURIComponent(engine)}`;
    try {
      const names = await requestAPI<ParserNamesModel>(`parsers${query}`);
      if ((this.inputs.get('engine')?.value || this.profile.default_engine) !== names.engine) {
        return; // the engine changed meanwhile: its own load fills the lists
      }
      this.suggest('tool_call_parser', [NO_PARSER, ...names.tool]);
      this.suggest('reasoning_parser', [NO_PARSER, ...names.reasoning]);
    } catch {
      // no suggestions: the automatic choice and typed names still work
    }
  }

  private changed(): void {
    const model = this.models.find(m => m.name === this.inputs.get('model')?.value);
    this.modelInfo.textContent = model
      ? `${model.size_gb} GB · ${model.family ?? 'unknown family'} · ${model.suggestion || model.problem}`
      : '';
    this.suggestGpuCounts();
    if ((this.inputs.get('engine')?.value ?? '') !== this.engine) {
      void this.loadParsers();
    }
    this.launchButton.disabled = true; // until the plan of these values says it can run
    this.asked++; // a plan of earlier values arriving now is not these values' plan
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => void this.replan(), REPLAN_DELAY);
  }

  /** Ask for the plan of the form's values and show it (or what is wrong, with that field marked). */
  async replan(): Promise<void> {
    const asked = ++this.asked;
    const body = JSON.stringify({ profile: this.profile.name, options: formOptions(this.values()) });
    let plan: PlanModel;
    try {
      plan = await requestAPI<PlanModel>('plans', { method: 'POST', body });
    } catch (error) {
      plan = { ok: false, headline: '', cost: '', problem: message(error), field: null, details: [], gpus: null,
        gpu_type: null, gpu_hours: null, need_gb: null, script: null };
    }
    if (asked !== this.asked) {
      return;
    }
    this.plan = plan;
    this.planned = asked;
    this.showPlan();
  }

  private showPlan(): void {
    const plan = this.plan;
    this.planNode.textContent = '';
    for (const [name, input] of this.inputs) {
      input.classList.toggle('jp-hpcllm-invalid', !!plan && !plan.ok && plan.field === name);
    }
    if (!plan) {
      return;
    }
    if (plan.ok) {
      this.planNode.appendChild(element('div', 'jp-hpcllm-title', plan.headline));
      this.planNode.appendChild(element('div', 'jp-hpcllm-facts', plan.cost));
      for (const detail of plan.details) {
        this.planNode.appendChild(element('div', 'jp-hpcllm-facts', detail));
      }
    } else {
      this.planNode.appendChild(element('div', 'jp-hpcllm-error', `Cannot launch: ${plan.problem}`));
    }
    this.scriptNode.textContent = plan.script ?? '';
    this.scriptButton.disabled = !plan.script;
    this.launchButton.disabled = !this.launchable();
  }

  /** The plan shown is of the values in the form, it can run, and no launch is on its way. */
  private launchable(): boolean {
    return !!this.plan?.ok && this.planned === this.asked && !this.launching;
  }

  private async launch(): Promise<void> {
    this.launching = true;
    this.launchButton.disabled = true;
    try {
      const body = JSON.stringify({ profile: this.profile.name, options: formOptions(this.values()) });
      this.launched(await requestAPI<LaunchModel>('servers', { method: 'POST', body }));
    } catch (error) {
      this.planNode.appendChild(element('div', 'jp-hpcllm-error', message(error)));
      if (error instanceof ApiError && error.field) {
        this.inputs.get(error.field)?.classList.add('jp-hpcllm-invalid');
      }
    }
    this.launching = false;
    this.launchButton.disabled = !this.launchable();
  }
}

function message(error: unknown): string {
  return error instanceof ApiError ? error.message : String(error);
}
