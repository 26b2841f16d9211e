"""Every asset is partitioned by upload: one dynamic partition per `source/<upload_id>/` folder."""

from dagster import DynamicPartitionsDefinition

uploads_partitions = DynamicPartitionsDefinition(name="uploads")
