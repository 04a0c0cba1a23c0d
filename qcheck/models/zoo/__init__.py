"""qcheck's embedded models: small GPT-2-, Pythia- and Llama-architecture LMs trained by
the project.

Each model lives in its own folder beside this file: `config.json`, `model.safetensors` and a
model card `card.json` (recipe, data, loss, heads found). tools/zoo/train.py is the recipe that
made them.
"""
