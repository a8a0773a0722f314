#!/usr/bin/env python3
"""Renders a kustomization the way `kustomize build` does, for the features
deploy/kubernetes uses and no others (anything else is an error, not silently skipped):
resources (files and directories), namespace, labels (pairs, on metadata only), images,
configMapGenerator (files) with disableNameSuffixHash, and patches in JSON 6902 form. Prints the resources as a JSON list. Used by tests/tests/kubernetes.rs where
no kustomize binary can be installed from the registries this project reaches.

usage: kustomize_render.py DIR
"""

import copy
import json
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "namespace", "labels", "resources", "images",
         "configMapGenerator", "generatorOptions", "patches"}


def render(directory):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    unknown = set(kustomization) - KNOWN
    if unknown:
        sys.exit(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    resources = []
    for entry in kustomization.get("resources", []):
        path = os.path.join(directory, entry)
        if os.path.isdir(path):
            resources.extend(render(path))
        else:
            with open(path) as f:
                resources.extend(doc for doc in yaml.safe_load_all(f) if doc)
    hashed = not kustomization.get("generatorOptions", {}).get("disableNameSuffixHash")
    for generator in kustomization.get("configMapGenerator", []):
        if hashed or set(generator) - {"name", "files"}:
            sys.exit(f"{directory}: only hash-less configMapGenerator with files is supported")
        data = {}
        for file in generator["files"]:
            with open(os.path.join(directory, file)) as f:
                data[os.path.basename(file)] = f.read()
        resources.append({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": generator["name"]}, "data": data})
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        for resource in resources:
            if (resource["kind"] == target["kind"]
                    and resource["metadata"]["name"] == target["name"]):
                apply_json6902(resource, yaml.safe_load(patch["patch"]))
    for image in kustomization.get("images", []):
        for container in containers(resources):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f'{image.get("newName", name)}:{image.get("newTag", tag)}'
    for labels in kustomization.get("labels", []):
        for resource in resources:
            add_labels(resource, labels["pairs"])
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] != "Namespace":
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def containers(resources):
    for resource in resources:
        spec = resource.get("spec", {}).get("template", {}).get("spec", {})
        yield from spec.get("containers", [])


def add_labels(resource, pairs):
    # kustomize's `labels` without includeSelectors/includeTemplates: metadata only.
    resource["metadata"].setdefault("labels", {}).update(pairs)


def apply_json6902(document, operations):
    for op in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~")
                          for p in op["path"].lstrip("/").split("/")]
        node = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = (len(node) if last == "-" else int(last)) if isinstance(node, list) else last
        if op["op"] == "test":
            if node[key] != op["value"]:
                sys.exit(f"patch test failed at {op['path']}: {node[key]!r}")
        elif op["op"] == "replace":
            node[key] = copy.deepcopy(op["value"])
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(key, copy.deepcopy(op["value"]))
            else:
                node[key] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[key]
        else:
            sys.exit(f"unsupported patch op {op['op']}")


if __name__ == "__main__":
    print(json.dumps(render(sys.argv[1]), indent=1))
