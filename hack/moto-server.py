"""Runs moto's server (the arguments of `moto_server`) with one shortcut.

moto reads the tags of one resource by scanning the tags of every resource
in the Region (`TagBackend.describe_tags` with a `resource-id` filter), and
DescribeInstances does that for every instance it filters and renders: a
listing is quadratic in the number of instances, and at a thousand of them
one call takes tens of seconds, so benchmarks measured moto, not the
operator. The shortcut reads that one resource's tags directly and answers
exactly what the scan answers (same entries, same order); everything else is
moto as it is. Without the internals it expects (another moto version) it
changes nothing.

Run with the Python of moto's virtualenv: `python moto-server.py -H ... -p ...`.
"""

import sys

from moto.server import main


def speed_up_tag_reads():
    try:
        from moto.ec2.models.core import TaggedEC2Resource
        from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix
    except ImportError:
        return

    def get_tags(self):
        resource_id = getattr(self, "id", None)
        tags = getattr(getattr(self, "ec2_backend", None), "tags", None)
        if not resource_id:
            return []
        if not isinstance(tags, dict):
            return self.ec2_backend.describe_tags(filters={"resource-id": [resource_id]})
        resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
        return [
            {
                "resource_id": resource_id,
                "key": key,
                "value": value,
                "resource_type": resource_type,
            }
            for key, value in dict(tags.get(resource_id, {})).items()
        ]

    TaggedEC2Resource.get_tags = get_tags


if __name__ == "__main__":
    speed_up_tag_reads()
    sys.argv[0] = "moto_server"
    sys.exit(main())
