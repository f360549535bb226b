#!/usr/bin/env python3
"""Golden data for the chat-template tests (src/chat, tests/chat): expected renderings made by Hugging Face
transformers itself, so the C++ renderer is checked against the real thing byte for byte.

Two kinds of cases, written under tests/data/chat/:

  models/<name>/tokenizer_config.json
      The four real configs from ../shared/testdata/chat_templates/ (copied verbatim); configs for
      templates written down here (OLMoE/Tülu, Mixtral, Qwen1.5-MoE, Qwen3, DeepSeek-V2, DeepSeek-R1,
      Llama-3.1 with tools, Llama-3.2 with strftime_now, a Hermes-style tool template with recursive
      macros and "default"/"tool_use" named templates, one with {% generation %}). A model whose
      template lives in chat_template.jinja (the current Hugging Face layout) can be listed in
      JINJA_FILE with its template committed there as input.
  conversations.json, tools.json
      The conversations and tool lists the cases refer to.
  goldens/<name>.json
      One case per conversation x add_generation_prompt x tools x template kwargs: the text
      tokenizer.apply_chat_template(..., tokenize=False) returns, or the exception it raises (type and
      message; raise_exception() messages must match exactly). The tokenizer is a PreTrainedTokenizerFast
      built around a one-word vocabulary with the config's special tokens and chat template, so the
      whole transformers path runs: template choice, special_tokens_map, message normalisation.
  snippets.json
      Small templates, one construct each (whitespace control, loops, filters, tests, scoping, errors),
      rendered by transformers' own compiled jinja2 environment (_compile_jinja_template).

Run by developers only (the C++ tests read the committed outputs):

    pip install transformers tokenizers jinja2
    python3 tools/golden/make_chat_goldens.py
"""

import datetime
import json
import shutil
from pathlib import Path

import jinja2
import transformers
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "chat"
SHARED = ROOT.parent / "shared" / "testdata" / "chat_templates"

# strftime_now() is pinned for the goldens: noon UTC, so the date is the same in every time zone the
# tests may run in (the C++ side reads the same instant through ChatOptions::now and localtime).
NOW = 1721995200  # 2024-07-26 12:00:00 UTC

# --- templates written down here ---------------------------------------------------------------------

OLMOE = (  # allenai/OLMoE-1B-7B-0924-Instruct: Tülu style
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\\n' + "
    "message['content'] + '\\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + "
    "'\\n' }}{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\\n'  + "
    "message['content'] + eos_token + '\\n' }}{% else %}{{ '<|assistant|>\\n'  + message['content'] + eos_token }}"
    "{% endif %}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    "{% endfor %}"
)

MIXTRAL = (  # mistralai/Mixtral-8x7B-Instruct-v0.1, the original template: no system role
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

MIXTRAL_V2 = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

QWEN15_MOE = (  # Qwen/Qwen1.5-MoE-A2.7B-Chat: ChatML with a default system prompt
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

DEEPSEEK_V2 = (  # deepseek-ai/DeepSeek-V2-Lite-Chat
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'Assistant:' }}{% endif %}"
)

DEEPSEEK_R1 = (  # DeepSeek-R1 style: drops past reasoning, opens the answer with <think>
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}"
    "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' "
    "+ tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] "
    "+ '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\\n' + '<｜tool▁call▁begin｜>' + "
    "tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] "
    "+ '\\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}"
    "{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}"
    "{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}"
    "{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}{{'\\n<｜tool▁output▁begin｜>' + message['content'] + "
    "'<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}"
    "{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)

QWEN3 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

LLAMA31_TOOLS = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Llama-3.2 reads the date from strftime_now() when it exists.
LLAMA32 = LLAMA31_TOOLS.replace(
    """{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}""",
    """{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}""",
)

HERMES = """{%- macro json_to_python_type(json_spec) %}
{%- set basic_type_map = {
    "string": "str",
    "number": "float",
    "integer": "int",
    "boolean": "bool"
} %}

{%- if basic_type_map[json_spec.type] is defined %}
    {{- basic_type_map[json_spec.type] }}
{%- elif json_spec.type == "array" %}
    {{- "list[" +  json_to_python_type(json_spec|items) + "]"}}
{%- elif json_spec.type == "object" %}
    {%- if json_spec.additionalProperties is defined %}
        {{- "dict[str, " + json_to_python_type(json_spec.additionalProperties) + ']'}}
    {%- else %}
        {{- "dict" }}
    {%- endif %}
{%- elif json_spec.type is iterable %}
    {{- "Union[" }}
    {%- for t in json_spec.type %}
      {{- json_to_python_type({"type": t}) }}
      {%- if not loop.last %}
        {{- "," }}
    {%- endif %}
    {%- endfor %}
    {{- "]" }}
{%- else %}
    {{- "Any" }}
{%- endif %}
{%- endmacro %}

{{- bos_token }}
{{- '<|im_start|>system\\n' }}
{{- "You are a function calling AI model. You are provided with function signatures within <tools></tools> XML tags. " }}
{{- "You may call one or more functions to assist with the user query. Don't make assumptions about what values to plug into functions. Here are the available tools: <tools> " }}
{%- for tool in tools or [] %}
    {%- if tool.function is defined %}
        {%- set tool = tool.function %}
    {%- endif %}
    {{- '{"type": "function", "function": ' }}
    {{- '{"name": "' + tool.name + '", ' }}
    {{- '"description": "' + tool.name + '(' }}
    {%- for param_name, param_fields in tool.parameters.properties|items %}
        {{- param_name + ": " + json_to_python_type(param_fields) }}
        {%- if not loop.last %}
            {{- ", " }}
        {%- endif %}
    {%- endfor %}
    {{- ")" }}
    {%- if tool.return is defined %}
        {{- " -> " + json_to_python_type(tool.return) }}
    {%- endif %}
    {{- " - " + tool.description + "\\n\\n" }}
    {%- for param_name, param_fields in tool.parameters.properties|items %}
        {%- if loop.first %}
            {{- "    Args:\\n" }}
        {%- endif %}
        {{- "        " + param_name + "(" + json_to_python_type(param_fields) + "): " + param_fields.description|default("")|trim }}
    {%- endfor %}
    {{- '", "parameters": ' }}
    {%- if tool.parameters.properties | length == 0 %}
        {{- "{}" }}
    {%- else %}
        {{- tool.parameters|tojson }}
    {%- endif %}
    {{- "}" }}
    {%- if not loop.last %}
        {{- "\\n" }}
    {%- endif %}
{%- endfor %}
{{- " </tools>" }}
{{- 'Use the following pydantic model json schema for each tool call you will make: {"properties": {"name": {"title": "Name", "type": "string"}, "arguments": {"title": "Arguments", "type": "object"}}, "required": ["name", "arguments"], "title": "FunctionCall", "type": "object"}\\n' }}
{{- "For each function call return a json object with function name and arguments within <tool_call></tool_call> XML tags as follows:\\n" }}
{{- "<tool_call>\\n" }}
{{- '{"name": <function-name>, "arguments": <args-dict>}\\n' }}
{{- '</tool_call><|im_end|>\\n' }}
{%- for message in messages %}
    {%- if message.role == "user" or message.role == "system" or (message.role == "assistant" and message.tool_calls is not defined) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
    {%- for tool_call in message.tool_calls %}
       {{- '\\n<tool_call>\\n' }}
           {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '{' }}
            {{- '"name": "' }}
            {{- tool_call.name }}
            {{- '"' }}
            {{- ', '}}
            {%- if tool_call.arguments is defined %}
                {{- '"arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments|tojson }}
                {%- endif %}
            {%- endif %}
             {{- '}' }}
            {{- '\\n</tool_call>' }}
    {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.previtem and loop.previtem.role != "tool" %}
            {{- '<|im_start|>tool\\n' }}
        {%- endif %}
        {{- '<tool_response>\\n' }}
        {{- message.content }}
        {%- if not loop.last %}
            {{- '\\n</tool_response>\\n' }}
        {%- else %}
            {{- '\\n</tool_response>' }}
        {%- endif %}
        {%- if not loop.last and loop.nextitem.role != "tool" %}
            {{- '<|im_end|>' }}
        {%- elif loop.last %}
            {{- '<|im_end|>' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

GENERATION = """{%- for message in messages -%}
  {%- if message.role == 'assistant' -%}
    {{- '<|assistant|>\\n' -}}
    {%- generation -%}
      {{- message.content | trim + eos_token -}}
    {%- endgeneration -%}
    {{- '\\n' -}}
  {%- else -%}
    {{- '<|' ~ message.role ~ '|>\\n' ~ message.content | trim ~ '\\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<|assistant|>
{% endif %}"""

WRITTEN = {
    "olmoe": {"eos_token": "<|endoftext|>", "pad_token": "<|padding|>", "bos_token": None, "chat_template": OLMOE},
    "mixtral": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "chat_template": MIXTRAL},
    "mixtral_v2": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "chat_template": MIXTRAL_V2},
    "qwen15_moe": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": QWEN15_MOE},
    "qwen3_moe": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": QWEN3},
    "deepseek_v2": {
        "bos_token": {"__type": "AddedToken", "content": "<｜begin▁of▁sentence｜>", "lstrip": False},
        "eos_token": {"__type": "AddedToken", "content": "<｜end▁of▁sentence｜>", "lstrip": False},
        "chat_template": DEEPSEEK_V2,
    },
    "deepseek_r1": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>", "chat_template": DEEPSEEK_R1},
    "llama3_1_tools": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA31_TOOLS},
    "llama3_2": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA32},
    # A list of named templates: "default" normally, "tool_use" when tools are given.
    "hermes": {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|im_end|>",
        "chat_template": [{"name": "default", "template": QWEN15_MOE}, {"name": "tool_use", "template": HERMES}],
    },
    "generation": {"eos_token": "</s>", "chat_template": GENERATION},
}
REAL = ["deepseek_v3", "qwen2_5", "llama3_1", "mistral_nemo"]
# Models kept in the current Hugging Face layout: the template in chat_template.jinja (committed under
# tests/data/chat/models/<name>/, transcribed from the published model), special tokens in the config.
JINJA_FILE = {}

# --- conversations ------------------------------------------------------------------------------------

LONG = " ".join(f"Sentence {i} of a long message, with commas, 'quotes' and \"double quotes\"." for i in range(40))

TOOL_CALL = {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius", "days": 3}}

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_multi": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2+2 is 4."},
        {"role": "user", "content": "And 3+3?"},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"},
    ],
    "ends_with_assistant": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ],
    "think": [
        {"role": "user", "content": "What is 7*6?"},
        {"role": "assistant", "content": "<think>\n7 times 6 is 42.\n</think>\n\nThe answer is 42."},
        {"role": "user", "content": "And 6*7?"},
    ],
    "think_last": [
        {"role": "system", "content": "Think step by step."},
        {"role": "user", "content": "Is 91 prime?"},
        {"role": "assistant", "content": "<think>91 = 7*13</think>No, 91 = 7 × 13."},
    ],
    "reasoning_field": [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris.", "reasoning_content": "The user asks about France."},
        {"role": "user", "content": "And Italy?"},
    ],
    "unicode": [
        {"role": "system", "content": "Réponds en français. 日本語もOK。 مرحبا"},
        {
            "role": "user",
            "content": "Emoji 👩‍👩‍👧 ZWJ, e\u0301 combining, nbsp:\u00a0, tab:\t, bell:\u0007, "
            "quotes ' \" \\ {{ not a tag }} {% raw %} <|im_end|> </s> <｜User｜>",
        },
        {"role": "assistant", "content": "Ça va ✓ — «ok» \u2028 line sep"},
        {"role": "user", "content": "ΣΊΣΥΦΟΣ ﬁne ß"},
    ],
    "empty_content": [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "  "},
    ],
    "whitespace": [
        {"role": "system", "content": "\n  System with spaces  \n"},
        {"role": "user", "content": "   leading and trailing   \n\n"},
        {"role": "assistant", "content": "\tTabbed answer\t"},
        {"role": "user", "content": "line one\nline two\r\nline three"},
    ],
    "long": [{"role": "user", "content": LONG}],
    "null_content": [
        {"role": "user", "content": "Call a tool."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call12345", "type": "function", "function": TOOL_CALL}]},
        {"role": "tool", "tool_call_id": "call12345", "content": '{"temperature": 21}'},
    ],
    "tool_calls": [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call12345", "type": "function", "function": TOOL_CALL}]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temperature": 21, "sky": "sunny"}'},
        {"role": "assistant", "content": "It is 21 °C and sunny."},
        {"role": "user", "content": "Thanks"},
    ],
    "tool_calls_string_args": [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "callabcde", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "callfghij", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "callabcde", "content": "sunny"},
        {"role": "tool", "tool_call_id": "callfghij", "content": "12:00"},
    ],
    "bad_order": [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    "assistant_first": [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "ok"}],
    "system_only": [{"role": "system", "content": "Only a system prompt."}],
    "unknown_role": [{"role": "user", "content": "hi"}, {"role": "critic", "content": "meh"}],
    "list_content": [{"role": "user", "content": [{"type": "text", "text": "Describe this."}, {"type": "image"}]}],
    "number_content": [{"role": "user", "content": 42}],
    "extra_fields": [
        {"role": "user", "content": "hi", "name": "alice", "weight": 0.5, "meta": {"b": 1, "a": [True, None]}},
    ],
    "two_systems": [
        {"role": "system", "content": "First system."},
        {"role": "system", "content": "Second system."},
        {"role": "user", "content": "Hi"},
    ],
}

TOOLS = {
    "weather": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather — in °C or °F.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "City name, e.g. \"Zürich\""},
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
                        "days": {"type": ["integer", "number"], "description": "Forecast days"},
                        "tags": {"type": "array", "items": {"type": "string"}, "description": "Free-form tags"},
                        "points": {
                            "type": "array",
                            "items": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}, "required": ["lat"]},
                            "description": "Coordinates",
                        },
                        "extra": {"type": "object", "additionalProperties": {"type": "number"}, "description": "Extra numbers"},
                        "threshold": {"type": "number", "default": 0.5, "description": "Alert threshold"},
                        "note": {"type": "string", "nullable": True, "description": "Optional note"},
                        "mode": {"oneOf": [{"type": "string", "description": "by name"}, {"type": "integer"}], "description": "Mode"},
                    },
                    "required": ["city"],
                },
                "return": {"type": "string"},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "Current time.",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ],
}

# Per model: the extra template kwargs to try besides none (on a few conversations, with the
# generation prompt).
KWARGS_CONVERSATIONS = ["system_multi", "think", "reasoning_field", "tool_calls"]
# The conversations also rendered with tools (the tool list is long; every conversation would repeat it).
TOOL_CONVERSATIONS = ["single_user", "system_multi", "system_only", "think", "unicode", "empty_content",
                      "null_content", "tool_calls", "tool_calls_string_args", "bad_order"]
KWARGS = {
    "qwen3_moe": [{"enable_thinking": False}, {"enable_thinking": True}],
    "llama3_1_tools": [{"date_string": "01 Jan 2025"}, {"tools_in_user_message": False}, {"builtin_tools": ["brave_search", "code_interpreter"]}],
    "llama3_2": [{"tools_in_user_message": False}],
}


def token_text(v):
    return v if v is None or isinstance(v, str) else v["content"]


def make_tokenizer(config):
    special = {k: token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")}
    special = {k: v for k, v in special.items() if v is not None}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        chat_template=config["chat_template"],
        **special,
    )


def pin_strftime(tokenizer):
    # The compiled template (cached per source) reads strftime_now from its environment's globals.
    fixed = lambda fmt: datetime.datetime.fromtimestamp(NOW).strftime(fmt)  # noqa: E731
    templates = tokenizer.chat_template.values() if isinstance(tokenizer.chat_template, dict) else [tokenizer.chat_template]
    for source in templates:
        _compile_jinja_template(source).environment.globals["strftime_now"] = fixed


def outcome(fn):
    try:
        return {"expected": fn()}
    except Exception as e:  # noqa: BLE001 - every failure is a golden too
        return {"error": {"type": type(e).__name__, "message": str(e)}}


def model_cases(name, config, conversations, tools):
    tokenizer = make_tokenizer(config)
    uses_clock = "strftime_now" in json.dumps(config["chat_template"])
    if uses_clock:
        pin_strftime(tokenizer)
    template_text = json.dumps(config["chat_template"])
    tool_sets = [None] + (["weather"] if "tools" in template_text else [])
    cases = []
    grid = [(c, agp, None, {}) for c in conversations for agp in (True, False)]
    grid += [(c, agp, t, {}) for c in TOOL_CONVERSATIONS for agp in (True, False) for t in tool_sets if t]
    grid += [(c, True, t, kw) for kw in KWARGS.get(name, []) for c in KWARGS_CONVERSATIONS for t in tool_sets]
    for conv_name, agp, tool_set, kwargs in grid:
        case = {"conversation": conv_name, "add_generation_prompt": agp, "tools": tool_set, "kwargs": kwargs}
        if uses_clock:
            case["now"] = NOW
        case.update(
            outcome(
                lambda: tokenizer.apply_chat_template(
                    json.loads(json.dumps(conversations[conv_name])),
                    tokenize=False,
                    add_generation_prompt=agp,
                    tools=tools[tool_set] if tool_set else None,
                    **kwargs,
                )
            )
        )
        cases.append(case)
    return cases


# --- snippets: one construct each, rendered by transformers' jinja2 environment ----------------------------

S = {  # a context shared by most snippets
    "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    "s": "Hello World",
    "n": None,
    "i": 7,
    "f": 2.5,
    "t": True,
    "lst": [3, 1, 2],
    "words": ["b", "A", "c", "a"],
    "d": {"b": 2, "a": 1, "items": "key named items"},
    "users": [{"name": "Ann", "age": 30, "tags": ["x"]}, {"name": "bob", "age": 25}, {"name": "Cy", "age": 30, "active": True}],
    "text": "  padded text \n",
    "uni": "Grüße, ΣΊΣΥΦΟΣ ǅ ﬃ ß İ",
    "nested": {"a": {"b": [10, {"c": "deep"}]}},
}

SNIPPETS = [
    # whitespace control, trim_blocks, lstrip_blocks
    ("ws_trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}),
    ("ws_lstrip_blocks", "line\n    {% if true %}\n    body\n    {% endif %}\nend", {}),
    ("ws_minus", "a   {%- if true -%}   b   {%- endif -%}   c", {}),
    ("ws_var_minus", "a \n {{- 'x' -}} \n b", {}),
    ("ws_plus", "  {%+ if true %}x{% endif +%}\ny", {}),
    ("ws_comment", "a\n  {# comment #}\nb {#- c -#} c\n{#+ keep #}d", {}),
    ("ws_var_no_lstrip", "    {{ 'v' }}\n  {% if true %}z{% endif %}", {}),
    ("ws_crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc\r\n", {}),
    ("ws_trailing_newline", "x\n", {}),
    ("ws_two_trailing_newlines", "x\n\n", {}),
    ("ws_unicode_space", "a\u3000{%- if true %}b{% endif %}", {}),
    ("ws_raw", "{% raw %}{{ not evaluated }}{% endraw %}|{%- raw -%}  x  {%- endraw -%}|", {}),
    ("ws_indent_first_line", "  {% set x = 1 %}{{ x }}", {}),
    ("ws_lstrip_after_var", "{{ 'a' }}  {% if true %}b{% endif %}", {}),
    # literals and operators
    ("lit_strings", "{{ 'a\\'b' }}|{{ \"c\\\"d\" }}|{{ 'x' 'y' }}|{{ '\\n\\t\\\\' }}|{{ '\\x41\\u00e9\\U0001F600\\101' }}|{{ '\\q' }}", {}),
    ("lit_numbers", "{{ 1 }}|{{ 1.5 }}|{{ 1e3 }}|{{ 1_000 }}|{{ 0x1F }}|{{ 0b101 }}|{{ 0o17 }}|{{ 12.5e-3 }}|{{ 1E20 }}", {}),
    ("lit_consts", "{{ true }}|{{ True }}|{{ false }}|{{ none }}|{{ None }}|{{ [1, 'a', none, true] }}|{{ {'k': 'v', 'n': 1} }}|{{ (1,) }}|{{ () }}|{{ (1, 2) }}", {}),
    ("floats", "{{ 0.1 + 0.2 }}|{{ 1/3 }}|{{ 2.0 }}|{{ 1e16 }}|{{ 1e15 }}|{{ 0.0001 }}|{{ 0.00001 }}|{{ -0.0 }}|{{ 10 / 4 }}|{{ 1e300 * 1e10 }}", {}),
    ("arith", "{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ -7 % 3 }}|{{ 7 % -3 }}|{{ 2 ** 10 }}|{{ 2 ** -1 }}|{{ 2 ** 3 ** 2 }}|{{ -2 ** 2 }}|{{ 7.5 // 2 }}|{{ -7.5 % 2 }}|{{ 1 + 2 * 3 - 4 }}|{{ true + 1 }}", {}),
    ("arith_strings", "{{ 'ab' * 3 }}|{{ 3 * 'x' }}|{{ 'a' + 'b' }}|{{ [1] + [2] }}|{{ [0] * 3 }}|{{ 'x' * 0 }}|{{ 'x' * -1 }}", {}),
    ("concat", "{{ 'a' ~ 1 ~ none ~ true ~ 2.5 ~ [1] ~ nope }}", {}),
    ("compare", "{{ 1 == 1.0 }}|{{ true == 1 }}|{{ 'a' < 'b' }}|{{ [1, 2] < [1, 3] }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}|{{ 'a' != 'b' }}|{{ none == none }}|{{ 2 >= 2 }}|{{ 'B' < 'a' }}", {}),
    ("membership", "{{ 'a' in 'cat' }}|{{ 'a' in d }}|{{ 1 in [1.0] }}|{{ 'z' not in 'abc' }}|{{ 3 in lst }}|{{ 'items' in d }}|{{ 'x' in nope }}", S),
    ("logic", "{{ 0 or 'x' }}|{{ 1 and 'y' }}|{{ '' or [] }}|{{ not 0 }}|{{ not [] }}|{{ none or 'n' }}|{{ 'a' and 0 }}", {}),
    ("truthiness", "{% for v in [0, 1, '', 'x', [], [0], {}, {'a': 1}, none, 0.0, 0.1, true, false] %}{{ 'T' if v else 'F' }}{% endfor %}", {}),
    ("condexpr", "{{ 'y' if true else 'n' }}|{{ 'y' if false else 'n' }}|{{ 'y' if false }}|{{ 1 if 0 else 2 if 0 else 3 }}", {}),
    ("unary", "{{ -i }}|{{ +i }}|{{ -f }}|{{ - -1 }}|{{ -i|abs }}|{{ not t }}", S),
    ("precedence_concat_error", "{{ 1 + 2 ~ 3 * 2 }}", {}),
    ("precedence", "{{ (1 + 2) ~ 3 * 2 }}|{{ 'a' ~ 'b' == 'ab' }}|{{ not 1 == 2 }}|{{ -1|abs + 1 }}|{{ 2 * 3 ** 2 }}", {}),
    # variables, attributes, items, undefined
    ("attr_item", "{{ messages[0].role }}|{{ messages[1]['content'] }}|{{ messages[-1].content }}|{{ nested.a.b[1].c }}|{{ nested['a']['b'][0] }}|{{ messages.0.role }}", S),
    ("attr_method_vs_key", "{{ d['items'] }}|{{ d.items is defined }}|{{ d.get('a') }}|{{ d.get('zz', 'dflt') }}|{{ d.get('zz') }}", S),
    ("undefined_render", "[{{ nope }}]|[{{ d.missing }}]|[{{ messages[10] }}]|[{{ s[100] }}]|[{{ none.attr }}]|[{{ s.nope }}]", S),
    ("undefined_tests", "{{ nope is defined }}|{{ nope is undefined }}|{{ d.missing is defined }}|{{ d.a is defined }}|{{ nope is none }}|{{ nope|default('dflt') }}|{{ ''|default('e') }}|{{ ''|default('e', true) }}|{{ none|default('x') }}|{{ nope|d('short') }}", S),
    ("undefined_ops", "{{ nope|length }}|{{ nope|list }}|{{ nope|join(',') }}|{{ nope|trim }}|{{ nope|string }}|{{ nope|upper }}|{{ nope is iterable }}|{{ nope is sequence }}|{{ nope is mapping }}|{{ nope is string }}|{% for x in nope %}never{% endfor %}|{{ nope|first }}|{{ nope ~ 'x' }}|{{ 'x' in nope }}|{{ nope == nope }}", {}),
    ("undefined_attr_error", "{{ nope.attr }}", {}),
    ("undefined_add_error", "{{ nope + 'x' }}", {}),
    ("undefined_nested_error", "{{ d.missing.deeper }}", S),
    ("undefined_call_error", "{{ nope() }}", {}),
    ("undefined_compare_error", "{{ nope < 1 }}", {}),
    ("undefined_iter_items", "{% for k, v in nope|items %}x{% endfor %}ok", {}),
    ("cond_undefined", "[{{ ('y' if false) ~ 'z' }}]", {}),
    # slicing
    ("slices", "{{ lst[1:] }}|{{ lst[:-1] }}|{{ lst[::-1] }}|{{ lst[::2] }}|{{ lst[5:] }}|{{ lst[-100:100] }}|{{ s[::-1] }}|{{ s[1:4] }}|{{ s[-5:] }}|{{ messages[1:][0].role }}|{{ lst[2:0:-1] }}", S),
    ("slice_unicode", "{{ uni[:5] }}|{{ uni[-3:] }}|{{ uni|length }}|{{ uni[1] }}", S),
    ("slice_step_zero", "{{ lst[::0] }}", S),
    ("slice_float", "[{{ lst[1.5:] }}]", S),
    # loops
    ("loop_vars", "{% for x in lst %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.depth }};{% endfor %}", S),
    ("loop_prev_next", "{% for x in lst %}[{{ loop.previtem }}|{{ loop.nextitem }}|{{ loop.cycle('a', 'b') }}|{{ loop.changed(x > 1) }}]{% endfor %}", S),
    ("loop_filter", "{% for u in users if u.age > 26 %}{{ u.name }}:{{ loop.index }}/{{ loop.length }}/{{ loop.last }};{% endfor %}", S),
    ("loop_filter_ns", "{% set ns = namespace(stop=false) %}{% for x in [1, 2, 3, 4] if not ns.stop %}{{ x }}{% if x == 2 %}{% set ns.stop = true %}{% endif %}{% endfor %}", {}),
    ("loop_filter_last_ns", "{% set ns = namespace(n=0) %}{% for x in [1, 2, 3] if x > ns.n %}{{ x }}{{ loop.last }}{% set ns.n = 5 %}{% endfor %}", {}),
    ("loop_else", "{% for x in [] %}a{% else %}empty{% endfor %}|{% for x in [1] %}b{% else %}no{% endfor %}|{% for x in [1, 2] if x > 5 %}c{% else %}filtered-empty{% endfor %}", {}),
    ("loop_break_continue", "{% for x in range(10) %}{% if x is odd %}{% continue %}{% endif %}{% if x > 6 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("loop_break_else", "{% for x in [1, 2] %}{% break %}{% else %}else{% endfor %}done", {}),
    ("loop_unpack", "{% for a, b in [[1, 2], [3, 4]] %}{{ a }}{{ b }}{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }}{% endfor %}|{% for a, b in ['xy'] %}{{ b }}{{ a }}{% endfor %}", S),
    ("loop_unpack_error", "{% for a, b in [[1, 2, 3]] %}{% endfor %}", {}),
    ("loop_string", "{% for c in 'héllo' %}{{ c }}.{% endfor %}", {}),
    ("loop_nested", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }}{% endfor %}{{ loop.index }} {% endfor %}", {}),
    ("loop_scope", "{% set x = 0 %}{% for i in [1, 2] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}|{{ x }}", {}),
    ("loop_outer_loop", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in [1] %}{{ outer.index }}{{ loop.index }}{% endfor %}{% endfor %}", {}),
    ("loop_over_dict_items_filter", "{% for k, v in d|items %}{{ k }}{% endfor %}|{% for k, v in d|dictsort %}{{ k }}{% endfor %}", S),
    ("loop_reversed", "{% for m in messages|reverse %}{{ m.role }}{% endfor %}|{% for m in messages[::-1] %}{{ loop.index0 }}{% endfor %}", S),
    ("loop_if_set_leaks", "{% if true %}{% set y = 5 %}{% endif %}{{ y }}", {}),
    ("loop_range", "{{ range(3)|list }}|{{ range(1, 10, 3)|list }}|{{ range(5, 0, -2)|list }}|{{ range(0)|list }}|{{ range(3) }}|{{ range(10)[2:5] }}|{{ range(3)|length }}", {}),
    ("loop_range_too_big", "{{ range(100001)|length }}", {}),
    # set, namespace, with, macros
    ("set_basic", "{% set a = 1 %}{% set b, c = 2, 3 %}{% set t = 4, 5 %}{{ a }}{{ b }}{{ c }}{{ t }}", {}),
    ("set_block", "{% set x %}inner {{ 1 + 1 }}{% endset %}[{{ x }}]|{% set y | upper %}shout{% endset %}{{ y }}", {}),
    ("namespace", "{% set ns = namespace(a=1, b='') %}{% for i in [1, 2] %}{% set ns.a = ns.a + i %}{% set ns.b = ns.b ~ i %}{% endfor %}{{ ns.a }}|{{ ns.b }}|{{ ns }}|{{ ns.zz is defined }}|{{ ns['a'] }}", {}),
    ("namespace_dict_arg", "{% set ns = namespace({'x': 1}, y=2) %}{{ ns.x }}{{ ns.y }}{% set ns.z = 3 %}{{ ns.z }}", {}),
    ("namespace_non_ns_error", "{% set x = [1] %}{% set x.y = 3 %}", {}),
    ("namespace_underscore_error", "{% set ns = namespace() %}{% set ns._private = 1 %}", {}),
    ("with_block", "{% set a = 1 %}{% with a = 2, b = a %}{{ a }}{{ b }}{% endwith %}{{ a }}", {}),
    ("macro_basic", "{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }}|{{ greet('Bob', '?') }}|{{ greet(punct='.', name='Cy') }}|{{ greet() }}", {}),
    ("macro_scope", "{% set x = 5 %}{% macro m() %}{% set x = 6 %}{{ x }}{% endmacro %}{{ m() }}{{ x }}", {}),
    ("macro_late_binding", "{% macro m() %}{{ x }}{% endmacro %}{% set x = 1 %}{{ m() }}{% set x = 2 %}{{ m() }}", {}),
    ("macro_varargs", "{% macro m(a, b=a ~ '!') %}{{ a }}{{ b }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1) }}|{{ m(1, 2, 3, k=4) }}", {}),
    ("macro_too_many_args", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}", {}),
    ("macro_recursive", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}{{ fact(6) }}", {}),
    ("macro_infinite_recursion", "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}", {}),
    ("macro_repr", "{% macro m() %}{% endmacro %}{{ m }}|{{ m is callable }}|{{ m is defined }}", {}),
    ("call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ 1 + 1 }}{% endcall %}", {}),
    ("call_block_args", "{% macro each(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(x) each([1, 2]) %}[{{ x }}]{% endcall %}", {}),
    ("filter_block", "{% filter upper %}shout {{ 'it' }}{% endfilter %}|{% filter trim|replace('a', 'o') %}  banana  {% endfilter %}", {}),
    ("generation_block", "{% for m in messages %}{% generation %}{{ m.content }}{% set inner = 1 %}{% endgeneration %};{% endfor %}{{ inner is defined }}", S),
    ("print_tag", "{% print 'a', 1 %}", {}),
    # filters
    ("f_trim", "[{{ text|trim }}]|[{{ '  x  '|trim }}]|[{{ 'xxhixx'|trim('x') }}]|[{{ '\u3000wide\u00a0'|trim }}]", S),
    ("f_length", "{{ lst|length }}|{{ s|length }}|{{ d|length }}|{{ uni|count }}|{{ ''|length }}", S),
    ("f_case", "{{ s|upper }}|{{ s|lower }}|{{ 'hello world'|capitalize }}|{{ 'hELLO wORLD'|title }}|{{ uni|upper }}|{{ uni|lower }}|{{ uni|title }}|{{ uni|capitalize }}|{{ \"they're bill's-friends (from [the] <uk>)\"|title }}", S),
    ("f_join", "{{ lst|join }}|{{ lst|join(', ') }}|{{ users|join('/', attribute='name') }}|{{ [1, none, true]|join('-') }}|{{ 'abc'|join('.') }}", S),
    ("f_first_last", "{{ lst|first }}|{{ lst|last }}|{{ s|first }}|{{ s|last }}|{{ d|first }}|{{ []|first is defined }}|{{ users|first|attr('keys') is defined }}", S),
    ("f_list_items", "{{ 'ab'|list }}|{{ d|list }}|{{ d|items|list }}|{{ d.items()|list }}|{{ d.keys()|list }}|{{ d.values()|list }}|{{ d.items() }}|{{ d.keys() }}", S),
    ("f_default_chain", "{{ nope|default(none) }}|{{ nope|default(s)|upper }}|{{ n|default('x') }}|{{ n|default('x', true) }}", S),
    ("f_replace", "{{ s|replace('o', '0') }}|{{ 'aaa'|replace('a', 'b', 2) }}|{{ 'ab'|replace('', '-') }}|{{ 5|replace('5', 'five') }}", S),
    ("f_tojson", "{{ d|tojson }}|{{ lst|tojson }}|{{ 'é\"\\n<>&\\''|tojson }}|{{ none|tojson }}|{{ [1.0, 2.5, 1e20, true]|tojson }}|{{ users|tojson }}|{{ {}|tojson }}|{{ []|tojson }}", S),
    ("f_tojson_indent", "{{ nested|tojson(indent=2) }}|{{ users[0]|tojson(indent=4) }}|{{ {'e': [], 'f': {}}|tojson(indent=2) }}|{{ [1]|tojson(indent=0) }}", S),
    ("f_tojson_options", "{{ d|tojson(sort_keys=true) }}|{{ 'é✓'|tojson(ensure_ascii=true) }}|{{ d|tojson(separators=[',', ':']) }}|{{ d|tojson(2) }}|{{ '😀'|tojson(true) }}|{{ d|tojson(indent='--') }}", S),
    ("f_tojson_tuple_keys", "{{ {1: 'a', 2.5: 'b', true: 'c', none: 'd'}|tojson }}", {}),
    ("f_tojson_undefined_error", "{{ nope|tojson }}", {}),
    ("f_safe_string", "{{ s|safe }}|{{ 5|string ~ 'x' }}|{{ none|string }}|{{ lst|string }}|{{ ('<' ~ 'a')|safe }}", S),
    ("f_markup_add", "{{ 'x'|safe + '<a>' }}|{{ '<a>' + 'x'|safe }}|{{ ('x'|safe) ~ '<a>' }}|{{ ('<x>'|safe|upper) + '<' }}|{{ ('a'|safe|replace('a', 'b')) + '<' }}|{{ ('a'|safe|trim) + '<' }}|{{ ['a'|safe] }}|{{ '<b>'|escape }}|{{ ('<b>'|e) + '<' }}|{{ '<i>'|forceescape }}", {}),
    ("f_select", "{{ lst|select('odd')|list }}|{{ lst|reject('odd')|list }}|{{ [0, 1, '', 'a', none]|select|list }}|{{ lst|select('>', 1)|list }}|{{ lst|select('equalto', 2)|list }}|{{ lst|select('in', [1, 2])|list }}", S),
    ("f_selectattr", "{{ users|selectattr('age', 'equalto', 30)|map(attribute='name')|list }}|{{ users|rejectattr('active')|map(attribute='name')|join(',') }}|{{ users|selectattr('active', 'defined')|list|length }}|{{ users|selectattr('active', 'undefined')|list|length }}|{{ messages|selectattr('role', 'eq', 'user')|first }}|{{ users|selectattr('tags.0', 'eq', 'x')|map(attribute='name')|first }}", S),
    ("f_generator_once", "{% set g = lst|select('odd') %}{{ g|list }}{{ g|list }}|{% if []|select %}truthy{% endif %}", S),
    ("f_generator_len_error", "{{ lst|select('odd')|length }}", S),
    ("f_map", "{{ users|map(attribute='name')|list }}|{{ users|map(attribute='missing', default='?')|list }}|{{ words|map('upper')|list }}|{{ lst|map('string')|join('+') }}|{{ ['a b', 'c']|map('replace', ' ', '_')|list }}|{{ users|map(attribute='tags.0')|list }}", S),
    ("f_sort", "{{ lst|sort }}|{{ lst|sort(reverse=true) }}|{{ words|sort }}|{{ words|sort(case_sensitive=true) }}|{{ users|sort(attribute='age')|map(attribute='name')|list }}|{{ users|sort(attribute='age,name')|map(attribute='name')|list }}", S),
    ("f_dictsort", "{{ d|dictsort }}|{{ d|dictsort(reverse=true) }}|{{ {'b': 1, 'A': 2}|dictsort }}|{{ {'b': 1, 'A': 2}|dictsort(true) }}|{{ {'x': 2, 'y': 1}|dictsort(by='value') }}", S),
    ("f_unique_minmax", "{{ words|unique|list }}|{{ words|unique(case_sensitive=true)|list }}|{{ lst|min }}|{{ lst|max }}|{{ words|max }}|{{ users|max(attribute='age')|attr('items') is defined }}|{{ users|min(attribute='name') }}|{{ []|max is defined }}", S),
    ("f_sum_abs_round", "{{ lst|sum }}|{{ users|sum(attribute='age') }}|{{ lst|sum(start=10) }}|{{ -3|abs }}|{{ -2.5|abs }}|{{ 2.5|round }}|{{ 3.5|round }}|{{ 2.675|round(2) }}|{{ 2.1|round(0, 'ceil') }}|{{ 2.9|round(1, 'floor') }}|{{ 5|round }}|{{ 15|round(-1) }}|{{ 25|round(-1) }}|{{ 42.55|round|int }}", S),
    ("f_int_float", "{{ '42'|int }}|{{ '42.7'|int }}|{{ 'x'|int }}|{{ 'x'|int(-1) }}|{{ 3.9|int }}|{{ ' 12 '|int }}|{{ '0x1A'|int(base=16) }}|{{ '1_000'|int }}|{{ '3.5'|float }}|{{ 'x'|float }}|{{ 2|float }}|{{ true|int }}|{{ none|int }}|{{ '1e3'|float }}|{{ 'inf'|float }}", {}),
    ("f_center_indent", "[{{ 'ab'|center(7) }}]|[{{ 'ab'|center(6) }}]|[{{ 'line1\\nline2\\n\\nline4'|indent(2) }}]|[{{ 'a\\nb'|indent(2, true) }}]|[{{ 'a\\n\\nb'|indent('> ', blank=true) }}]", {}),
    ("f_wordcount_reverse", "{{ 'one two  three'|wordcount }}|{{ 'héllo_wörld 42'|wordcount }}|{{ [1, 2]|reverse|list }}|{{ 'abc'|reverse }}|{{ d|reverse|list }}", S),
    ("f_attr", "{{ d|attr('a') is defined }}|{{ d|attr('items') is defined }}|{{ s|attr('upper') is defined }}", S),
    ("f_items_error", "{{ 5|items|list }}", {}),
    ("f_unknown_error", "{{ s|nonexistent }}", S),
    ("f_unknown_in_if", "{% if false %}{{ s|nonexistent }}{% endif %}ok", S),
    # tests
    ("tests_types", "{{ s is string }}|{{ 1 is string }}|{{ d is mapping }}|{{ lst is mapping }}|{{ lst is iterable }}|{{ s is iterable }}|{{ 5 is iterable }}|{{ lst is sequence }}|{{ d is sequence }}|{{ 1 is number }}|{{ 1.5 is number }}|{{ true is number }}|{{ 's' is number }}|{{ 1 is integer }}|{{ true is integer }}|{{ 1.0 is float }}|{{ true is boolean }}|{{ n is none }}|{{ 0 is none }}", S),
    ("tests_values", "{{ true is true }}|{{ 1 is true }}|{{ false is false }}|{{ 0 is false }}|{{ 3 is odd }}|{{ 4 is even }}|{{ 9 is divisibleby 3 }}|{{ 9 is divisibleby(2) }}|{{ 'abc' is lower }}|{{ 'ABC' is upper }}|{{ 'Abc' is lower }}|{{ 2 is in [1, 2] }}|{{ 2 is eq 2 }}|{{ 2 is ne 2 }}|{{ 3 is gt 2 }}|{{ 3 is ge 3 }}|{{ 2 is lt 3 }}|{{ 2 is le 1 }}|{{ 1 is greaterthan 0 }}|{{ 1 is lessthan 0 }}", {}),
    ("e_test_operator_name", "{{ 1 is == 1 }}", {}),
    ("tests_misc", "{{ none is sameas none }}|{{ false is sameas false }}|{{ 0 is sameas false }}|{{ 'upper' is filter }}|{{ 'nope' is filter }}|{{ 'odd' is test }}|{{ s is escaped }}|{{ (s|safe) is escaped }}|{{ range is callable }}|{{ s is callable }}|{{ s.upper is callable }}", S),
    ("tests_not", "{{ s is not string }}|{{ nope is not defined }}|{{ n is not none }}|{{ not s is string }}", S),
    ("tests_unknown_error", "{{ s is nonexistent }}", S),
    # methods
    ("m_str", "{{ s.startswith('Hell') }}|{{ s.endswith(('x', 'ld')) }}|{{ s.split() }}|{{ s.split('o') }}|{{ 'a,b,,c'.split(',', 1) }}|{{ ' a  b '.split() }}|{{ 'a b c'.rsplit(' ', 1) }}|{{ s.lower() }}|{{ s.upper() }}|{{ 'x-y z'.title() }}|{{ s.replace('l', 'L', 2) }}|{{ '  x '.strip() }}|{{ 'xxyxx'.lstrip('x') }}|{{ 'xxyxx'.rstrip('x') }}|{{ s.find('o') }}|{{ s.rfind('o') }}|{{ s.find('z') }}|{{ s.count('l') }}|{{ '-'.join(['a', 'b']) }}", S),
    ("m_str_more", "{{ 'a\\nb\\r\\nc'.splitlines() }}|{{ 'a\\nb'.splitlines(true) }}|{{ 'Hello'.removeprefix('He') }}|{{ 'Hello'.removesuffix('lo') }}|{{ 'ab'.center(6, '*') }}|{{ 'ab'.ljust(4, '.') }}|{{ 'ab'.rjust(4) }}|{{ '42'.zfill(5) }}|{{ '-4'.zfill(4) }}|{{ 'a=b=c'.partition('=') }}|{{ 'a=b=c'.rpartition('=') }}|{{ '123'.isdigit() }}|{{ 'abc'.isalpha() }}|{{ ' \\t'.isspace() }}|{{ 'abc'.islower() }}|{{ 'ABC'.isupper() }}|{{ 'ab1'.isalnum() }}|{{ 'hello world'.capitalize() }}|{{ s.index('W') }}", S),
    ("m_str_think", "{% set c = '<think>\\nreason\\n</think>\\n\\nanswer' %}{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}|{{ c.split('</think>')[-1].lstrip('\\n') }}", {}),
    ("m_str_index_error", "{{ s.index('zz') }}", S),
    ("m_str_split_empty_error", "{{ s.split('') }}", S),
    ("m_dict", "{{ d.keys()|list }}|{{ d.values()|list }}|{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}|{{ d.get('a', 0) }}|{{ d.copy() }}", S),
    ("m_list", "{{ lst.index(1) }}|{{ lst.count(3) }}|{{ [1, 1, 2].count(1) }}", S),
    ("m_list_append_error", "{% set x = lst.append(4) %}", S),
    ("m_dunder_undefined", "[{{ s.__class__ }}]|{{ d.__class__ is defined }}", S),
    # globals
    ("g_raise", "{{ raise_exception('Custom failure: ' ~ 42) }}", {}),
    ("g_raise_in_loop", "{% for m in messages %}{% if m.role == 'assistant' %}{{ raise_exception('no assistant at ' ~ loop.index0) }}{% endif %}{% endfor %}", S),
    ("g_dict", "{{ dict(a=1, b='x') }}|{{ dict([('k', 'v')]) }}|{{ dict({'a': 1}, b=2) }}", {}),
    ("g_strftime_defined", "{{ strftime_now is defined }}|{{ raise_exception is defined }}|{{ namespace is defined }}|{{ range is defined }}", {}),
    # corners where a reimplementation may drift
    ("x_float_repr", "{{ 1e22 }}|{{ 1.5e-7 }}|{{ 123456789012345678.0 }}|{{ 0.1 + 0.7 }}|{{ 1/7 }}|{{ 2.5e-5 }}|{{ 100.0 }}|{{ 1e16 - 1 }}|{{ -1.5 }}|{{ 5e-324 }}|{{ 1.7976931348623157e308 }}", {}),
    ("x_float_ops", "{{ -7.5 // 2 }}|{{ 7.5 % -2 }}|{{ -0.0 // 1 }}|{{ 2 ** 0.5 }}|{{ 10 / 3 * 3 }}|{{ 1 + 1.0 }}|{{ 3 // 2.0 }}|{{ (0.1 * 3)|round(15) }}", {}),
    ("x_nan_inf", "{{ 'nan'|float }}|{{ 'inf'|float }}|{{ '-inf'|float }}|{{ ['nan'|float, 'inf'|float]|tojson }}|{{ ('nan'|float) == ('nan'|float) }}", {}),
    ("x_str_title_quirks", "{{ \"they're bill's\".title() }}|{{ 'hello-world 2nd'.title() }}|{{ 'ǆemal ǅ'.title() }}|{{ 'ßa'.capitalize() }}|{{ 'ΣΑΣ Σ'.lower() }}|{{ 'aΣ.'.lower() }}|{{ 'ﬁ'.upper() }}", {}),
    ("x_compare_types", "{{ [1] == (1,) }}|{{ (1, 2) == (1, 2) }}|{{ {'a': 1} == {'a': 1.0} }}|{{ 'a' == none }}|{{ 1 != '1' }}|{{ [1, [2]] < [1, [3]] }}|{{ (1, 'a') < (1, 'b') }}", {}),
    ("x_dict_literal", "{% set x = {'b': 1, 'a': 2, 'b': 3} %}{{ x }}|{{ x|tojson }}|{{ {1: 'x', 1.0: 'y', true: 'z'} }}|{{ x.b }}|{{ x['a'] }}", {}),
    ("x_in_dict_unhashable", "{{ [1] in {'a': 1} }}", {}),
    ("x_select_tests", "{{ messages|rejectattr('content', 'none')|list|length }}|{{ [none, 1, none]|select('none')|list }}|{{ [' a ', 'b ']|map('trim')|list }}|{{ d|join(',') }}|{{ {'a': 1, 'b': 2}.items()|selectattr('1', 'gt', 1)|list }}|{{ messages|map(attribute='role')|unique|list }}", S),
    ("x_strings_methods_unicode", "{{ 'ÀÉÎ'.lower() }}|{{ 'straße'.upper() }}|{{ '  \u2003x\u00a0 '.strip()|length }}|{{ 'a\u2028b\x85c'.splitlines() }}|{{ 'x\u3000y z'.split() }}|{{ 'abc'.find('') }}|{{ 'abc'.count('') }}|{{ 'aaa'.count('aa') }}|{{ 'abc'.rfind('') }}|{{ 'abc'.startswith('') }}|{{ 'ab'.endswith('b', 0, 1) }}", {}),
    ("x_repr_strings", r"""{{ ['it\'s', 'say "hi"', 'both \' "', 'tab\t', 'nl\n', '\\', '\x7f', '\u00ad', '\u200b', '😀', 'é', '\u2028', '\x9f', '\x00'] }}""", {}),
    ("x_repr_nested", "{{ {'a': [1, {'b': (2, none)}], 'c': 'd'} }}|{{ [[]] }}|{{ [{}] }}|{{ ((1,),) }}|{{ [1.0, -0.0, 1e100] }}", {}),
    ("x_loop_cycle_changed", "{% for x in [1, 1, 2, 2, 1] %}{{ loop.changed(x) }}{{ loop.cycle('a', 'b', 'c') }}{% endfor %}", {}),
    ("x_loop_length_filter_last", "{% for m in messages if m.role != 'system' %}{{ m.role }}{{ loop.length }}{{ loop.last }}{{ loop.revindex }};{% endfor %}", S),
    ("x_loop_in_macro", "{% macro m(xs) %}{% for x in xs %}{{ x }}{{ loop.index }}{% endfor %}{% endmacro %}{% for y in [[1, 2], [3]] %}{{ m(y) }}|{{ loop.index }};{% endfor %}", {}),
    ("x_continue_else", "{% for x in [1] %}{% continue %}{% else %}E{% endfor %}|{% for x in [1, 2] %}{% if x == 2 %}{% continue %}{% endif %}{% else %}F{% endfor %}", {}),
    ("x_nested_macro_args", "{% macro outer(a) %}{% macro inner(b) %}{{ a }}{{ b }}{% endmacro %}{{ inner(2) }}{% endmacro %}{{ outer(1) }}", {}),
    ("x_macro_caller_default", "{% macro m() %}{{ caller is defined }}{% endmacro %}{{ m() }}|{% call m() %}{% endcall %}", {}),
    ("x_set_loop_shadow", "{% set x = 'outer' %}{% for x in [1, 2] %}{{ x }}{% endfor %}{{ x }}|{% for i in [1] %}{% set inner = i %}{% endfor %}{{ inner is defined }}", {}),
    ("x_undefined_in_list", "{{ [nope, 1] }}|{{ [nope]|length }}|{{ nope in [nope] }}", {}),
    ("x_default_on_none_attr", "{{ n.x|default('fallback') }}|{{ n['x'] is defined }}", S),
    ("x_getattr_on_numbers", "[{{ i.foo }}]|[{{ f.bar }}]|[{{ t.baz }}]|{{ i['x'] is defined }}", S),
    ("x_string_ops_markup", "{{ ('<a>'|safe).replace('<', '[') }}|{{ ('a b'|safe).split() }}|{{ ('x'|safe).join(['<', '>']) }}|{{ ('<x>'|safe)|length }}|{{ ('ab'|safe)[0] + '<' }}", {}),
    ("x_indent_markup", "{{ ('a\nb'|safe|indent(2)) + '<' }}|{{ 'a\n\nb\n'|indent(1, true, true) }}", {}),
    ("x_int_edge", "{{ '  -12  '|int }}|{{ '+7'|int }}|{{ '1__0'|int }}|{{ '0b11'|int(0, 2) }}|{{ '0o17'|int(base=8) }}|{{ 'z'|int(base=36) }}|{{ ''|int }}|{{ '3.9e1'|int }}|{{ 1e15|int }}", {}),
    ("x_whitespace_mix", "a\n\t  {%- if true %}\n\tb{% endif -%}\n  \tc\n  {% for x in [1] -%}\n   {{ x }}\n  {%- endfor %}\nd", {}),
    ("x_lstrip_tabs_comment", "x\n\t\t{# tabbed comment #}\n\t{% if true %}y{% endif %}\n", {}),
    ("x_raw_lstrip", "a\n    {% raw %}\n    {{ x }}\n    {% endraw %}\nb", {}),
    ("x_var_end_newline", "{{ 'a' }}\n{{ 'b' -}}\n\n{{ 'c' }}", {}),
    ("x_dict_in_tag", "{{ {'a': {'b': 1}} }}|{% set x = {'k': [1, {'z': 2}]} %}{{ x.k[1].z }}", {}),
    ("x_tojson_nested_unicode", "{{ {'ключ': ['значение', '\u2028', '\x00\x1f']}|tojson }}|{{ {'a': 'é'}|tojson(ensure_ascii=true, indent=1) }}", {}),
    ("x_tojson_sort_mixed_error", "{{ {1: 'a', 'b': 2}|tojson(sort_keys=true) }}", {}),
    ("x_attr_item_chain", "{{ messages[1:]|map(attribute='content')|join('/') }}|{{ (messages|last).role }}|{{ (messages|first)['content'] }}|{{ messages[messages|length - 1].content }}", S),
    ("x_bool_math", "{{ true + true }}|{{ true * 3 }}|{{ -true }}|{{ true / 2 }}|{{ [1, 2][true] }}|{{ 'ab'[false] }}", {}),
    ("x_items_filter_order", "{% for k, v in {'z': 1, 'a': 2}|items %}{{ k }}{{ v }}{% endfor %}|{{ {'z': 1, 'a': 2}|dictsort|first }}", {}),
    ("x_strftime_format", "{{ strftime_now('%Y')|length }}", {}),
    # syntax errors (TemplateSyntaxError at compile time)
    ("e_unclosed_if", "{% if true %}never closed", {}),
    ("e_unknown_tag", "{% frobnicate %}", {}),
    ("e_bad_expr", "{{ 1 + }}", {}),
    ("e_unclosed_var", "{{ 1 ", {}),
    ("e_unbalanced", "{{ (1 }}", {}),
    ("e_endfor_mismatch", "{% for x in y %}{% endif %}", {}),
    ("e_break_outside", "{% break %}", {}),
    ("e_unterminated_string", "{{ 'abc }}", {}),
    ("e_unclosed_comment", "{# never closed", {}),
    ("e_chained_tests", "{{ 1 is number is number }}", {}),
    ("e_non_default_after_default", "{% macro m(a=1, b) %}{% endmacro %}", {}),
    ("e_assign_const", "{% set true = 1 %}", {}),
    ("e_type_add", "{{ 'a' + 1 }}", {}),
    ("e_div_zero", "{{ 1 / 0 }}", {}),
    ("e_not_callable", "{{ s() }}", S),
    ("e_not_iterable", "{% for x in 5 %}{% endfor %}", {}),
    ("e_lt_mixed", "{{ 1 < 'a' }}", {}),
    ("e_str_in_int", "{{ 1 in 'abc' }}", {}),
    ("e_extends", "{% extends 'base.html' %}", {}),
    ("e_include", "{% include 'x.html' %}", {}),
    ("e_line_numbers", "line1\nline2\n{{ 1 + }}\nline4", {}),
    ("e_runtime_line", "a\nb\n{{ nope.attr }}\nc", {}),
]


def snippet_cases():
    cases = []
    for name, source, context in SNIPPETS:
        case = {"name": name, "template": source, "context": context}

        def render():
            return _compile_jinja_template(source).render(**json.loads(json.dumps(context)))

        case.update(outcome(render))
        cases.append(case)
    return cases


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main():
    assert SHARED.is_dir(), f"{SHARED}: the shared test data is missing"
    for name in JINJA_FILE:
        assert (OUT / "models" / name / "chat_template.jinja").is_file(), f"{name}: chat_template.jinja is missing"
    if (OUT / "goldens").exists():
        shutil.rmtree(OUT / "goldens")
    configs = {}
    for name in REAL:
        src = SHARED / f"{name}.tokenizer_config.json"
        dst = OUT / "models" / name / "tokenizer_config.json"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        configs[name] = json.loads(src.read_text(encoding="utf-8"))
    for name, config in WRITTEN.items():
        write_json(OUT / "models" / name / "tokenizer_config.json", config)
        configs[name] = config
    for name, tokens in JINJA_FILE.items():
        write_json(OUT / "models" / name / "tokenizer_config.json", tokens)
        configs[name] = {**tokens, "chat_template": (OUT / "models" / name / "chat_template.jinja").read_text(encoding="utf-8")}
    write_json(OUT / "conversations.json", CONVERSATIONS)
    write_json(OUT / "tools.json", TOOLS)
    total = 0
    for name, config in configs.items():
        cases = model_cases(name, config, CONVERSATIONS, TOOLS)
        total += len(cases)
        write_json(OUT / "goldens" / f"{name}.json", {"model": name, "cases": cases})
        errors = sum("error" in c for c in cases)
        print(f"{name:16} {len(cases):4} cases ({errors} errors)")
    snippets = snippet_cases()
    write_json(
        OUT / "snippets.json",
        {"transformers": transformers.__version__, "jinja2": jinja2.__version__, "cases": snippets},
    )
    print(f"{total} template x conversation cases, {len(snippets)} snippets "
          f"(transformers {transformers.__version__}, jinja2 {jinja2.__version__})")


if __name__ == "__main__":
    main()
